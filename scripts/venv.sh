# Sourced by demo.sh and test.sh (from the repository's root): `venv_install EXTRAS` makes .venv
# if needed and installs taskbridge into it, editable, with EXTRAS ("" or "test"), unless it is
# already installed from this pyproject.toml with them. Editable, the code is read from the
# checkout, so only pyproject.toml (dependencies, entry points, package data) needs a reinstall;
# pip's upgrade and the build otherwise cost every run half a minute and a page of noise.
# .venv/.taskbridge-installed holds pyproject.toml's SHA-256 and the extras installed with it;
# delete it to force a reinstall.
venv_install() {
  local extras="$1" stamp=.venv/.taskbridge-installed digest had_digest="" had_extras=""
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  digest=$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')
  if [ -f "$stamp" ]; then
    read -r had_digest had_extras < "$stamp" || true
  fi
  # The test extras include everything the demo needs: either install serves the demo.
  if [ "$had_digest" = "$digest" ] && { [ -z "$extras" ] || [ "$had_extras" = "$extras" ]; }; then
    return 0
  fi
  rm -f "$stamp"  # written again only once the install below succeeded
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
  echo "$digest ${extras:--}" > "$stamp"
}
