"""mlip tests. Importing mlip first lets e3nn 0.4.4 load its constants under torch >= 2.6."""

import mlip  # noqa: F401
