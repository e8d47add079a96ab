#!/usr/bin/env bash
# Builds the Kubernetes binaries that tests need (envtest's kube-apiserver and
# etcd, kubectl, ...) from Go modules, since no prebuilt release can be
# downloaded here, into a cache outside the repository:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/kez-chat/k8s/<k8s version>/bin
#
# or $KEZ_TOOLS_DIR when set. Prints that directory as the last line of
# stdout (progress goes to stderr), so
#
#   KUBEBUILDER_ASSETS=$(hack/tools/install-k8s-tools.sh) go test ./...
#
# works. A binary already in the cache is kept unless the go.mod/go.sum it
# was built from changed, so a warm run takes no time and starts no `go`.
#
# Usage: install-k8s-tools.sh [--print-dir] [TOOL...]
#   TOOL        build only these (default: every tool in TOOLS; those in
#               OPTIONAL_TOOLS, such as centrifugo, only when named)
#   --print-dir print the directory and exit, building nothing
#
# Each tool is built from a module of its own under hack/tools/<module>/,
# whose go.mod pins the versions (and go.sum their hashes); add a tool by
# adding a line to TOOLS and, if it needs one, a module directory with a
# `tool` directive for its main package.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# name                     module  main package
TOOLS=(
	"kube-apiserver          k8s     k8s.io/kubernetes/cmd/kube-apiserver"
	"kube-controller-manager k8s     k8s.io/kubernetes/cmd/kube-controller-manager"
	"kube-scheduler          k8s     k8s.io/kubernetes/cmd/kube-scheduler"
	"kubectl                 k8s     k8s.io/kubernetes/cmd/kubectl"
	"etcd                    etcd    go.etcd.io/etcd/server/v3"
	"helm                    helm    helm.sh/helm/v4/cmd/helm"
	"kwok                    kwok    sigs.k8s.io/kwok/cmd/kwok"
	"versitygw               versitygw github.com/versity/versitygw/cmd/versitygw"
	"registry                registry github.com/distribution/distribution/v3/cmd/registry"
	"ct                      ct      github.com/helm/chart-testing/v3/ct"
	"kubelet                 kubelet k8s.io/kubernetes/cmd/kubelet"
	"kube-proxy              kubelet k8s.io/kubernetes/cmd/kube-proxy"
	"containerd              containerd github.com/containerd/containerd/v2/cmd/containerd"
	"containerd-shim-runc-v2 containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	"promtool                prometheus github.com/prometheus/prometheus/cmd/promtool"
)

# Built only when named (`install-k8s-tools.sh centrifugo`, `make centrifugo`),
# never by default, so `make k8s-tools` and CI do not spend minutes on them.
OPTIONAL_TOOLS=(
	"centrifugo              centrifugo github.com/centrifugal/centrifugo/v6"
	"prometheus              prometheus github.com/prometheus/prometheus/cmd/prometheus"
)

# Bump to rebuild every cached binary after a change to how they are built.
BUILD_RECIPE=1

die() { echo "install-k8s-tools: $*" >&2; exit 1; }
log() { echo "install-k8s-tools: $*" >&2; }

# modversion DIR MODULE: MODULE's version in hack/tools/DIR/go.mod.
modversion() {
	awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }
		$1 == "require" && $2 == m { print $3; exit }' "$here/$1/go.mod"
}

k8s_version="$(modversion k8s k8s.io/kubernetes)"
[[ -n $k8s_version ]] || die "no k8s.io/kubernetes version in $here/k8s/go.mod"
dir="${KEZ_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kez-chat/k8s/$k8s_version/bin}"

print_dir=false
want=()
for arg in "$@"; do
	case $arg in
	--print-dir) print_dir=true ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
	-*) die "unknown flag $arg" ;;
	*) want+=("$arg") ;;
	esac
done
if $print_dir; then
	echo "$dir"
	exit 0
fi

# ldflags for a module's binaries: strip symbols, and stamp the version the
# way the upstream release builds do, so `--version` tells the truth.
ldflags() {
	local flags="-s -w" v
	case $1 in
	k8s | kubelet)
		v="$k8s_version"
		local major="${v#v}" minor
		minor="${major#*.}"
		major="${major%%.*}"
		minor="${minor%%.*}"
		local pkg kv
		for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
			for kv in "gitVersion=$v" "gitMajor=$major" "gitMinor=$minor" "gitTreeState=clean"; do
				flags+=" -X $pkg.$kv"
			done
		done
		;;
	helm)
		v="$(modversion helm helm.sh/helm/v4)"
		flags+=" -X helm.sh/helm/v4/internal/version.version=$v"
		flags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
		;;
	versitygw)
		flags+=" -X main.Version=$(modversion versitygw github.com/versity/versitygw)"
		;;
	containerd)
		flags+=" -X github.com/containerd/containerd/v2/version.Version=$(modversion containerd github.com/containerd/containerd/v2)"
		;;
	ct)
		flags+=" -X github.com/helm/chart-testing/v3/ct/cmd.Version=$(modversion ct github.com/helm/chart-testing/v3)"
		;;
	registry)
		flags+=" -X github.com/distribution/distribution/v3/version.version=$(modversion registry github.com/distribution/distribution/v3)"
		;;
	prometheus)
		v="$(modversion prometheus github.com/prometheus/prometheus)"
		# The module's v0.316.0 is Prometheus 3.16.0.
		v="${v#v0.}"
		local n="${v%%.*}"
		flags+=" -X github.com/prometheus/common/version.Version=$((n / 100)).$((n % 100)).${v#*.}"
		;;
	centrifugo)
		v="$(modversion centrifugo github.com/centrifugal/centrifugo/v6)"
		flags+=" -X github.com/centrifugal/centrifugo/v6/internal/build.Version=${v#v}"
		;;
	esac
	echo "$flags"
}

# tags MODULE: the build tags of a module's binaries.
tags() {
	case $1 in
	# containerd's snapshotters for btrfs, devmapper and zfs need cgo or
	# tools the node does not have; the node uses the native snapshotter.
	containerd) echo "no_btrfs,no_devmapper,no_zfs" ;;
	# Prometheus' service discovery plugins (AWS, Azure, GCE, Kubernetes,
	# ...) are left out, which halves promtool's cold build; rule tests
	# and a static scrape config need none of them.
	prometheus) echo "remove_all_sd" ;;
	esac
}

# stamp MODULE PACKAGE: what a binary was built from (go.mod less its
# comments, and go.sum); a change rebuilds it.
stamp() {
	{
		echo "recipe $BUILD_RECIPE package $2"
		sed 's|//.*||' "$here/$1/go.mod" | awk NF
		cat "$here/$1/go.sum"
	} | sha256sum | cut -d' ' -f1
}

if ((${#want[@]} == 0)); then
	for t in "${TOOLS[@]}"; do
		read -r name _ <<<"$t"
		want+=("$name")
	done
fi

mkdir -p "$dir"
# One install at a time per directory (e.g. under make -j); the binaries are
# moved into place whole, so a reader never sees a half-written one.
exec 9>"$dir/.lock"
flock 9

# Which wanted tools need building, grouped by module so that one `go build`
# per module compiles the packages its binaries share once.
declare -A pkgs_by_module=()
modules=()
for name in "${want[@]}"; do
	found=""
	for t in "${TOOLS[@]}" "${OPTIONAL_TOOLS[@]}"; do
		read -r n mod pkg <<<"$t"
		[[ $n == "$name" ]] && found="$mod $pkg"
	done
	[[ -n $found ]] || die "unknown tool $name (known: $(printf '%s ' "${TOOLS[@]}" "${OPTIONAL_TOOLS[@]}" | awk '{for (i = 1; i <= NF; i += 3) printf "%s ", $i}'))"
	read -r mod pkg <<<"$found"
	bin="$dir/$name"
	if [[ -x $bin ]]; then
		# Kept: built from the same go.mod/go.sum, or put there by someone
		# else (no stamp), e.g. a KEZ_TOOLS_DIR of downloaded binaries.
		if [[ ! -f $dir/.$name.stamp || $(<"$dir/.$name.stamp") == "$(stamp "$mod" "$pkg")" ]]; then
			continue
		fi
		log "$name: built from an older $mod/go.mod or go.sum; rebuilding"
	fi
	[[ -v "pkgs_by_module[$mod]" ]] || modules+=("$mod")
	pkgs_by_module[$mod]+="$name=$pkg "
done

tmp=""
cleanup() { [[ -z $tmp ]] || rm -rf "$tmp"; }
trap cleanup EXIT

for mod in "${modules[@]}"; do
	read -r -a entries <<<"${pkgs_by_module[$mod]}"
	names=() pkgs=()
	for e in "${entries[@]}"; do
		names+=("${e%%=*}")
		pkgs+=("${e#*=}")
	done
	tmp="$(mktemp -d "$dir/.build.XXXXXX")"
	if ((${#pkgs[@]} == 1)); then
		out="$tmp/${names[0]}"
	else
		# Several main packages: go build names each binary after the last
		# element of its import path, which must then be the tool's name.
		out="$tmp/"
		for i in "${!names[@]}"; do
			[[ ${pkgs[i]##*/} == "${names[i]}" ]] || die "${pkgs[i]} builds as ${pkgs[i]##*/}, not ${names[i]}; give it a module of its own"
		done
	fi
	log "building ${names[*]} (hack/tools/$mod) into $dir"
	start=$SECONDS
	(
		cd "$here/$mod"
		GOWORK=off CGO_ENABLED=0 go build -trimpath -buildvcs=false \
			-tags "$(tags "$mod")" -ldflags "$(ldflags "$mod")" -o "$out" "${pkgs[@]}"
	)
	for i in "${!names[@]}"; do
		name="${names[i]}"
		stamp "$mod" "${pkgs[i]}" >"$tmp/.$name.stamp"
		mv -f "$tmp/$name" "$dir/$name"
		mv -f "$tmp/.$name.stamp" "$dir/.$name.stamp"
	done
	rm -rf "$tmp"
	tmp=""
	log "built ${names[*]} in $((SECONDS - start))s"
done

echo "$dir"
