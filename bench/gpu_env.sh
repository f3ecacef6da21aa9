# Sourced by the GPU scripts from the repository root: puts the repository on
# PYTHONPATH and, when DALI_WHEELS names a folder of DALI wheels (a GPU host
# without network or DALI), installs them into a private site folder first.
if [ -n "${DALI_WHEELS:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/dali-site "$DALI_WHEELS"/*.whl
    export PYTHONPATH=/tmp/dali-site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
