#!/usr/bin/env bash
# Checks mlip against both ends of the e3nn range that pyproject.toml allows.
#
# For each e3nn version (default: 0.4.4, the version mace-torch pins, and "newest", whatever pip
# resolves within the range, i.e. what .ci/run gets) it makes a fresh venv in a temporary
# directory, installs torch's CPU build FIRST (an unpinned torch would pull a multi-GB CUDA build),
# then the project with its test extra and that e3nn, prints the installed e3nn version and runs
# the tests of the equivariant code (spherical harmonics, Clebsch-Gordan blocks, grids, the Facet
# and MACE-like models, model files). One summary line per version; the exit status is non-zero
# if any version fails.
#
# Time: about 2.5 minutes per version, 5 minutes for both, on 2 CPU cores with a warm pip cache
# (installs take all but about 15 s of it); without a pip cache the first install can take 10.
#
# Usage: scripts/check_e3nn_range.sh [--versions "0.4.4 0.6.0"] [--keep] [-- PYTEST_ARGS...]
#   --versions  space-separated e3nn versions; "newest" leaves e3nn unpinned (pip's choice)
#   --keep      keep the temporary venvs (their directory is printed)
#   -- ...      pytest arguments instead of the default test files
# Environment: PYTHON (default python3.11, else python3), TORCH_VERSION (default 2.13.0).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
versions="0.4.4 newest"
keep=0
pytest_args=(
    tests/test_nn_parts.py
    tests/test_physics.py
    tests/test_mace.py
    tests/test_message_degree.py
    tests/test_grid_species.py
    tests/test_smoothness.py
    tests/test_export.py
)
while [[ $# -gt 0 ]]; do
    case "$1" in
        --versions) versions="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        --) shift; pytest_args=("$@"); break ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
for f in "${pytest_args[@]}"; do
    if [[ "$f" == tests/* && ! -e "$repo/${f%%::*}" ]]; then
        echo "missing test file: $f" >&2
        exit 2
    fi
done

python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
torch_version="${TORCH_VERSION:-2.13.0}"
work="$(mktemp -d "${TMPDIR:-/tmp}/mlip-e3nn.XXXXXX")"
if [[ $keep -eq 1 ]]; then
    echo "venvs kept under $work"
else
    trap 'rm -rf "$work"' EXIT
fi

summary=()
failed=0
for version in $versions; do
    start=$SECONDS
    venv="$work/e3nn-$version"
    echo "=== e3nn $version: venv $venv ($("$python" --version))"
    if [[ "$version" == newest ]]; then spec=(); else spec=("e3nn==$version"); fi
    status=ok
    "$python" -m venv "$venv" || status="venv failed"
    if [[ $status == ok ]]; then
        "$venv/bin/python" -m pip install --quiet "torch==$torch_version" || status="torch install failed"
    fi
    if [[ $status == ok ]]; then
        "$venv/bin/python" -m pip install --quiet -e "$repo[test]" "${spec[@]}" ||
            status="mlip install failed"
    fi
    installed="?"
    if [[ $status == ok ]]; then
        installed="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("e3nn"))')"
        torch_installed="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))')"
        echo "installed: e3nn $installed, torch $torch_installed"
        log="$work/pytest-$version.log"
        # -p no:cacheprovider: the runs share the repository, leave its .pytest_cache alone
        (cd "$repo" && "$venv/bin/python" -m pytest -q -p no:cacheprovider "${pytest_args[@]}") 2>&1 |
            tee "$log" || status="tests failed"
        result="$(grep -E '^=* ?[0-9]+ (passed|failed|error)|(passed|failed|error).* in [0-9.]+s' "$log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')"
        [[ -n "$result" ]] && status="$status: $result"
    fi
    [[ $status == ok* ]] || failed=1
    summary+=("e3nn $version (installed $installed): $status [$((SECONDS - start)) s]")
    if [[ $keep -eq 0 ]]; then rm -rf "$venv"; fi
done

echo "=== summary"
printf '%s\n' "${summary[@]}"
exit $failed
