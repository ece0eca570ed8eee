"""mlip tests. Importing mlip.nn first lets e3nn 0.4.4 load its constants under torch >= 2.6."""

import mlip.nn  # noqa: F401
