#!/usr/bin/env bash
# hvdkit's Docker images, built and run on this machine.
#
#   scripts/docker.sh base    make the base image locally (debootstrap) when it cannot be pulled
#   scripts/docker.sh build   build the CPU image (and the GPU one where its CUDA base is present)
#   scripts/docker.sh test    build, then run a 4-rank hvdkit job across 2 containers over ssh
#
# If no Docker engine answers, the script (as root) installs Debian's docker.io
# when dockerd is missing, starts dockerd, and stops it again when done. It
# removes everything it made (containers, network, keys, staged wheels, the
# daemon it started), also when a step fails or it is interrupted.
#
# Settings (environment): HVDKIT_IMAGE (hvdkit:cpu), HVDKIT_GPU_IMAGE
# (hvdkit:gpu), HVDKIT_BASE_IMAGE (debian:bookworm-slim), HVDKIT_SSH_PORT
# (2222), HVDKIT_DEBIAN_MIRROR (the one apt uses), HVDKIT_WHEEL_DIR (where a
# torch CPU wheel lies; default pip's find-links), HVDKIT_DOCKER_EPOCHS (20).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO_ROOT"

IMAGE="${HVDKIT_IMAGE:-hvdkit:cpu}"
GPU_IMAGE="${HVDKIT_GPU_IMAGE:-hvdkit:gpu}"
BASE_IMAGE="${HVDKIT_BASE_IMAGE:-debian:bookworm-slim}"
CUDA_IMAGE="${HVDKIT_CUDA_IMAGE:-nvidia/cuda:13.0.0-devel-ubuntu24.04}"
PORT="${HVDKIT_SSH_PORT:-2222}"
EPOCHS="${HVDKIT_DOCKER_EPOCHS:-20}"
MIN_ACCURACY=94  # % on digits after 20 epochs at 4 ranks (10 epochs reach about 94.4 %)
MAX_GAP=1.0      # points between the 2-container job and the same job inside one container
IMAGE_PY_TAG=cp311  # Debian bookworm's python3, which the CPU image's venv is built on
DOCKER="${DOCKER:-docker}"

die() { echo "hvdkit docker: error: $*" >&2; exit 1; }
note() { echo "hvdkit docker: $*"; }

# Undo steps, run last-in first-out on any exit.
cleanups=()
on_exit() {
  local rc=$? i
  for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do eval "${cleanups[i]}" || true; done
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

is_root() { [ "$(id -u)" = 0 ]; }

# Runs a long step (a build, a job) in the background and waits for it. Bash
# runs a trap only once the foreground command has ended, so without this a
# Ctrl-C or TERM would clean up only after minutes of build or training; with
# it the clean-up runs at once and ends the step (killing the docker client
# cancels a build; removing the containers ends a job).
waited() {  # LOG COMMAND... -> COMMAND's exit status, its output in LOG
  local log=$1 pid rc=0
  shift
  "$@" > "$log" 2>&1 < /dev/null &
  pid=$!
  cleanups+=("kill $pid 2> /dev/null")
  wait "$pid" || rc=$?
  unset 'cleanups[${#cleanups[@]}-1]'
  return "$rc"
}

apt_get() {
  { is_root && command -v apt-get > /dev/null; } || die "need root and apt-get to install $*"
  note "installing $* with apt-get"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } > /tmp/hvdkit-docker-apt.log 2>&1 \
    || { tail -n 20 /tmp/hvdkit-docker-apt.log >&2; die "apt-get install $* failed (log above)"; }
}

stop_daemon() {  # pid, log
  note "stopping the dockerd this script started (pid $1)"
  kill -TERM "$1" 2> /dev/null || return 0
  for _ in $(seq 60); do kill -0 "$1" 2> /dev/null || return 0; sleep 0.5; done
  kill -KILL "$1" 2> /dev/null || true
}

ensure_engine() {
  local why
  if command -v "$DOCKER" > /dev/null && why=$("$DOCKER" info 2>&1 > /dev/null); then return; fi
  is_root || die "cannot reach a Docker engine (${why:-no docker client}), and starting one needs root;" \
    "start dockerd (or Docker Desktop), join the docker group, or run this as root"
  command -v dockerd > /dev/null || apt_get docker.io
  command -v "$DOCKER" > /dev/null || DOCKER=/usr/bin/docker
  local log pid
  [ -z "${why:-}" ] || note "no Docker engine answers ($(tail -n 1 <<< "$why")); starting one"
  log=$(mktemp /tmp/hvdkit-dockerd.XXXXXX.log)
  setsid dockerd > "$log" 2>&1 < /dev/null &
  pid=$!
  cleanups+=("stop_daemon $pid; rm -f $log")
  note "started dockerd (pid $pid, log $log)"
  for _ in $(seq 60); do
    "$DOCKER" info > /dev/null 2>&1 && return
    kill -0 "$pid" 2> /dev/null || { tail -n 20 "$log" >&2; die "dockerd exited at start (log above)"; }
    sleep 1
  done
  tail -n 20 "$log" >&2
  die "dockerd did not answer within 60 s (log above)"
}

# The build needs BuildKit (secret and cache mounts). Docker >= 23 clients
# build through the buildx plugin; older ones (Debian 12's docker.io 20.10)
# have it built in behind DOCKER_BUILDKIT=1.
build_command() {
  if "$DOCKER" buildx version > /dev/null 2>&1; then
    BUILD=("$DOCKER" buildx build --load)
    return
  fi
  local client major
  for client in "$DOCKER" /usr/bin/docker; do
    major=$("$client" version --format '{{.Client.Version}}' 2> /dev/null | cut -d. -f1 || true)
    if [ -n "$major" ] && [ "$major" -lt 23 ] 2> /dev/null; then
      BUILD=(env DOCKER_BUILDKIT=1 "$client" build)
      return
    fi
  done
  die "building needs BuildKit: install the buildx plugin (Debian: apt-get install docker-buildx; Docker's packages: docker-buildx-plugin)"
}

debian_mirror() {
  if [ -n "${HVDKIT_DEBIAN_MIRROR:-}" ]; then echo "$HVDKIT_DEBIAN_MIRROR"; return; fi
  local found
  found=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2> /dev/null \
    | grep -oE '(https?|ftp)://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)
  echo "${found:-http://deb.debian.org/debian}"
}

# A stand-in for debian:bookworm-slim where Docker Hub cannot be reached:
# debootstrap's minimal Debian 12 from the mirror apt already uses.
cmd_base() {
  ensure_engine
  if "$DOCKER" image inspect "$BASE_IMAGE" > /dev/null 2>&1; then
    note "base image $BASE_IMAGE is present"
    return
  fi
  if timeout 120 "$DOCKER" pull -q "$BASE_IMAGE" > /dev/null 2>&1; then
    note "pulled $BASE_IMAGE"
    return
  fi
  case "$BASE_IMAGE" in
    debian:bookworm*) ;;
    *) die "cannot pull $BASE_IMAGE and can only make Debian bookworm images locally; set HVDKIT_BASE_IMAGE=debian:bookworm-slim" ;;
  esac
  is_root || die "cannot pull $BASE_IMAGE, and making it with debootstrap needs root"
  command -v debootstrap > /dev/null || apt_get debootstrap
  local rootfs mirror started=$SECONDS
  mirror=$(debian_mirror)
  rootfs=$(mktemp -d /tmp/hvdkit-rootfs.XXXXXX)
  cleanups+=("rm -rf $rootfs")
  note "cannot pull $BASE_IMAGE; making it with debootstrap from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; rm -f "$rootfs.log"; die "debootstrap failed (log above)"; }
  rm -f "$rootfs.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$BASE_IMAGE" > /dev/null
  note "made $BASE_IMAGE in $((SECONDS - started)) s ($(image_size "$BASE_IMAGE"))"
}

image_size() {
  "$DOCKER" image inspect --format '{{.Size}}' "$1" | awk '{printf "%.2f GB", $1 / 1e9}'
}

# A torch CPU wheel on local disk, for the version requirements.txt pins:
# PyPI's Linux torch is the CUDA build, and PyTorch's CPU index may be out of reach.
local_torch_wheel() {
  local version dirs dir
  version=$(sed -n 's/^torch==\([^ #]*\).*/\1/p' requirements.txt)
  dirs="${HVDKIT_WHEEL_DIR:-} ${PIP_FIND_LINKS:-} $(pip config get global.find-links 2> /dev/null || true)"
  for dir in $dirs; do
    dir="${dir#file://}"
    compgen -G "$dir/torch-$version+cpu-$IMAGE_PY_TAG-*linux*x86_64.whl" | head -n1 && return
  done
  return 0
}

pip_cert() {
  local cert="${PIP_CERT:-$(pip config get global.cert 2> /dev/null || true)}"
  [ -n "$cert" ] && [ -s "$cert" ] && echo "$cert"
  return 0
}

cmd_build() {
  cmd_base
  build_command
  local args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" -f docker/Dockerfile.cpu -t "$IMAGE")
  local wheel cert started=$SECONDS
  wheel=$(local_torch_wheel)
  if [ -n "$wheel" ]; then
    ln -f "$wheel" docker/wheels/ 2> /dev/null || cp "$wheel" docker/wheels/
    cleanups+=("rm -f docker/wheels/$(basename "$wheel")")
    args+=(--build-arg TORCH_INDEX_URL=)
    note "torch from the local wheel $wheel"
  fi
  local secrets=()
  cert=$(pip_cert)
  [ -z "$cert" ] || secrets=(--secret "id=pip_cert,src=$cert")
  note "building $IMAGE (docker/Dockerfile.cpu); log in /tmp/hvdkit-docker-build.log"
  if ! waited /tmp/hvdkit-docker-build.log "${BUILD[@]}" --progress=plain "${args[@]}" "${secrets[@]}" .; then
    tail -n 60 /tmp/hvdkit-docker-build.log >&2
    die "building $IMAGE failed (last lines above; whole log /tmp/hvdkit-docker-build.log)"
  fi
  note "built $IMAGE in $((SECONDS - started)) s; size $(image_size "$IMAGE")"
  if "$DOCKER" image inspect "$CUDA_IMAGE" > /dev/null 2>&1; then
    started=$SECONDS
    note "building $GPU_IMAGE (docker/Dockerfile.gpu); log in /tmp/hvdkit-docker-build-gpu.log"
    waited /tmp/hvdkit-docker-build-gpu.log "${BUILD[@]}" --progress=plain "${secrets[@]}" -f docker/Dockerfile.gpu -t "$GPU_IMAGE" . \
      || { tail -n 60 /tmp/hvdkit-docker-build-gpu.log >&2; die "building $GPU_IMAGE failed (log above)"; }
    note "built $GPU_IMAGE in $((SECONDS - started)) s; size $(image_size "$GPU_IMAGE")"
  else
    note "not building $GPU_IMAGE: its base $CUDA_IMAGE is not here (docker pull it where Docker Hub is reachable)"
  fi
}

# Two containers on a network of their own, sshd in each, one 4-rank job
# launched from the first across both, its accuracy checked.
cmd_test() {
  cmd_build
  local tag="hvdkit-test-$$" work keys output accuracy
  work=$(mktemp -d /tmp/hvdkit-docker-test.XXXXXX)  # keys/ (mounted as /root/.ssh) and the jobs' logs
  cleanups+=("rm -rf $work")
  keys="$work/keys"
  mkdir "$keys"
  ssh-keygen -q -t ed25519 -N '' -C "$tag" -f "$keys/id_ed25519"
  cp "$keys/id_ed25519.pub" "$keys/authorized_keys"
  # No Port line: the jobs below name the port with hvdkit run -p, as users do.
  printf 'Host c1 c2\n  IdentityFile /root/.ssh/id_ed25519\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n' \
    > "$keys/config"
  chmod 700 "$keys" && chmod 600 "$keys"/*

  # --internal: the containers reach each other and nothing else.
  "$DOCKER" network create --driver bridge --internal "$tag" > /dev/null
  cleanups+=("$DOCKER network rm $tag > /dev/null")
  local node
  for node in c1 c2; do
    cleanups+=("$DOCKER rm -f $tag-$node > /dev/null 2>&1")
    "$DOCKER" run -d --name "$tag-$node" --hostname "$node" --network "$tag" --network-alias "$node" \
      --shm-size=1g -v "$keys:/root/.ssh:ro" "$IMAGE" hvdkit-worker "$PORT" > /dev/null
  done
  note "containers $tag-c1 and $tag-c2 on network $tag, sshd on port $PORT"
  for _ in $(seq 30); do
    "$DOCKER" exec "$tag-c1" ssh -p "$PORT" c2 true 2> /dev/null && break
    sleep 1
  done
  "$DOCKER" exec "$tag-c1" ssh -p "$PORT" c2 true || { "$DOCKER" logs "$tag-c2" >&2; die "c1 cannot ssh to c2 on port $PORT"; }

  # Where the ranks run: two on each container, or the launch is not what it claims.
  waited "$work/hosts.log" "$DOCKER" exec "$tag-c1" hvdkit run -np 4 -H c1:2,c2:2 -p "$PORT" -- hostname \
    || { cat "$work/hosts.log" >&2; die "the placement check failed (output above)"; }
  # The ranks' output is one host name a line; a launcher's warning (words) is not a rank.
  output=$(grep -xE '[[:alnum:]_.-]+' "$work/hosts.log" || true)
  [ "$(sort <<< "$output" | tr '\n' ' ')" = "c1 c1 c2 c2 " ] \
    || die "expected ranks on c1, c1, c2, c2; they ran on: $(tr '\n' ' ' <<< "$output")(whole output: $(< "$work/hosts.log"))"
  note "ranks placed on c1, c1, c2, c2"

  local started=$SECONDS single
  waited "$work/two.log" "$DOCKER" exec "$tag-c1" hvdkit run -np 4 -H c1:2,c2:2 -p "$PORT" -- hvdkit train --epochs "$EPOCHS" \
    || { cat "$work/two.log" >&2; die "the 2-container job failed (output above)"; }
  output=$(< "$work/two.log")
  echo "$output" | tail -n 3
  accuracy=$(final_accuracy "$output" 2)
  note "2-container job: final test accuracy $accuracy% in $((SECONDS - started)) s"
  # The same job (same seed, same 4 ranks) inside one container: only the
  # order of the sums may differ, so the accuracy must agree closely.
  started=$SECONDS
  waited "$work/one.log" "$DOCKER" exec "$tag-c2" hvdkit run -np 4 -- hvdkit train --epochs "$EPOCHS" \
    || { cat "$work/one.log" >&2; die "the 1-container job failed (output above)"; }
  output=$(< "$work/one.log")
  single=$(final_accuracy "$output" 1)
  note "1-container job: final test accuracy $single% in $((SECONDS - started)) s"
  awk -v a="$accuracy" -v m="$MIN_ACCURACY" 'BEGIN { exit !(a >= m) }' \
    || die "the 2-container job's final test accuracy $accuracy% is below $MIN_ACCURACY%"
  awk -v a="$accuracy" -v b="$single" -v g="$MAX_GAP" 'BEGIN { d = a - b; exit !(d <= g && -d <= g) }' \
    || die "the 2-container job reached $accuracy% but the same job in one container $single% (more than $MAX_GAP points apart)"
  note "passed: 4 ranks on 2 containers over ssh, digits, $EPOCHS epochs: $accuracy% (one container: $single%)"
}

final_accuracy() {  # a job's output, its expected nodes -> its final test accuracy in %
  local value
  grep -q "4 ranks on $2 node(s)" <<< "$1" || die "the job did not report 4 ranks on $2 node(s): $(head -n 5 <<< "$1")"
  value=$(sed -n 's/.*final test accuracy \([0-9.]*\)%.*/\1/p' <<< "$1")
  [ -n "$value" ] || die "the job printed no final test accuracy: $(tail -n 5 <<< "$1")"
  echo "$value"
}

case "${1:-}" in
  base) cmd_base ;;
  build) cmd_build ;;
  test) cmd_test ;;
  *) die "usage: scripts/docker.sh base|build|test (got '${1:-}')" ;;
esac
