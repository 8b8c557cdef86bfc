#!/usr/bin/env bash
# verify-install.sh: prove that compat/node_modules holds the published SDK and
# its dependencies byte for byte, as package-lock.json pins them.
#
#	compat/verify-install.sh     # after `npm ci` in compat/
#
# What it proves, and why that is enough:
#  1. `npm ls --all` accepts the tree: every package the lock names is installed
#     at the locked version, and nothing else is (no extraneous or invalid one).
#  2. For every package in the lock, `npm pack <name>@<version>` fetches the
#     registry's tarball (npm's cache serves it when `npm ci` just fetched it;
#     npm checks it against the registry's published integrity either way). Its
#     SHA-512, computed here independently of npm, must equal the lock's
#     `integrity`: the lock pins exactly what the registry publishes.
#  3. Every file of that tarball must be in node_modules with the same bytes,
#     and node_modules/<package> must hold no file the tarball lacks (nested
#     node_modules aside, which step 1 and this loop cover as packages).
# A patched SDK (or a patched dependency, or a file added next to them) fails
# step 3; a lock edited to pin something else fails step 2. npm's own checks
# are not trusted alone: `npm ci` verifies tarballs but not the files on disk
# afterwards, which is where a patch (patch-package, a postinstall) would live.
set -euo pipefail
cd "$(dirname "$0")"

[ -d node_modules ] || { echo "verify-install: no compat/node_modules; run npm ci in compat/ first" >&2; exit 1; }

echo "verify-install: npm ls --all"
npm ls --all >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# <install path> <name>@<version> <integrity>, one line per locked package.
node -e '
	const lock = require("./package-lock.json");
	for (const [path, p] of Object.entries(lock.packages)) {
		if (!path) continue;
		if (p.link || !p.integrity) { console.error("verify-install: " + path + " is not a registry package"); process.exit(1); }
		const name = path.slice(path.lastIndexOf("node_modules/") + "node_modules/".length);
		console.log(path + " " + name + "@" + p.version + " " + p.integrity);
	}' >"$work/packages"

# One npm call for all of them (each separately would cost seconds apiece).
cut -d' ' -f2 "$work/packages" | sort -u >"$work/specs"
mkdir "$work/tgz"
# shellcheck disable=SC2046
npm pack --ignore-scripts --silent --json --pack-destination "$work/tgz" $(cat "$work/specs") >"$work/packed.json"

node -e '
	const fs = require("fs"), crypto = require("crypto"), path = require("path");
	const [packed, list, dir] = process.argv.slice(1);
	const files = {};
	for (const p of JSON.parse(fs.readFileSync(packed, "utf8"))) files[p.id] = p.filename;
	let bad = 0;
	for (const line of fs.readFileSync(list, "utf8").trim().split("\n")) {
		const [where, spec, integrity] = line.split(" ");
		const file = files[spec];
		if (!file) { console.error("verify-install: npm pack returned nothing for " + spec); bad++; continue; }
		const [algo, want] = integrity.split("-", 2);
		const got = crypto.createHash(algo).update(fs.readFileSync(path.join(dir, file))).digest("base64");
		if (got !== want) { console.error(`verify-install: ${spec}: the registry tarball hashes to ${algo}-${got}, the lock pins ${integrity}`); bad++; }
		console.log(where + " " + path.join(dir, file));
	}
	if (bad) process.exit(1);
	' "$work/packed.json" "$work/packages" "$work/tgz" >"$work/tarballs"

n=0
while read -r where tgz; do
	x="$work/x/$n"
	mkdir -p "$x"
	tar -xzf "$tgz" -C "$x" --strip-components=1
	if ! diff -r --no-dereference --exclude=node_modules "$x" "$where" >"$work/diff" 2>&1; then
		echo "verify-install: $where differs from its published tarball:" >&2
		head -n 20 "$work/diff" >&2
		exit 1
	fi
	n=$((n + 1))
done <"$work/tarballs"

sdk=$(node -p 'require("./node_modules/@open-dy/open_api_sdk/package.json").version')
echo "verify-install: $n packages byte-identical to their published tarballs (@open-dy/open_api_sdk $sdk)"
