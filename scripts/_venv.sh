# Shared by scripts/serve and scripts/test: make .venv with the given requirements file.
# Reinstalls only when the requirements files changed since the last install.
ensure_venv() {
  local requirements="$1"
  local python="${PYTHON:-python3}"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python 3.11 or newer is needed ($python is $("$python" --version 2>&1))." >&2
    echo "       Set PYTHON=/path/to/python3.11 or install it." >&2
    exit 1
  fi
  if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv; then
      echo "error: could not create a virtual environment; on Debian/Ubuntu: apt install python3-venv" >&2
      exit 1
    fi
  fi
  local stamp
  stamp=$(cat requirements.txt "$requirements" | sha256sum | cut -d' ' -f1)
  if [ "$(cat .venv/.installed 2>/dev/null)" != "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r "$requirements"
    echo "$stamp" > .venv/.installed
  fi
}
