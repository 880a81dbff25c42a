# Debian packages SwiftLDM needs, and a function that installs the missing ones.
# Sourced by the Launch/ scripts; not run on its own.

# Build and run: oneDNN, OpenMPI, HDF5 (its OpenMPI flavour), libpng and
# libjpeg-turbo (image folders), the Fashion-MNIST data.
LDM_RUNTIME_PACKAGES="pkg-config zlib1g-dev libdnnl-dev libopenmpi-dev openmpi-bin libhdf5-openmpi-dev libpng-dev libturbojpeg0-dev dataset-fashion-mnist"
# Checks that read our files as users do (h5py), and make and decode test images
# the way users' Python does (Pillow, NumPy); ip and tc for the multi-host rehearsal
# (Launch/netns-hosts).
LDM_CHECK_PACKAGES="python3-h5py hdf5-tools python3-pil python3-numpy iproute2"
# The emoji recipe: the Noto Color Emoji font, read with fontTools, named with
# the CLDR names of python3-emoji (Launch/make-emoji-folder).
LDM_EMOJI_PACKAGES="fonts-noto-color-emoji python3-fonttools python3-emoji python3-pil"
# Side-by-side benchmarks: Debian's PyTorch with the BLAS it recommends (without
# libopenblas0 its matrix products run on the reference BLAS, ~30x slower).
LDM_BENCH_PACKAGES="python3-torch libopenblas0"

# ldm_install PACKAGE...: apt-get install whatever of PACKAGE... is not installed.
ldm_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The Swift toolchain: on PATH, or at /opt/swift.
ldm_swift_path() {
    command -v swift >/dev/null 2>&1 && return 0
    [ -x /opt/swift/usr/bin/swift ] && export PATH="/opt/swift/usr/bin:$PATH" && return 0
    echo "SwiftLDM needs Swift 6 (swift not on PATH and not at /opt/swift)" >&2
    exit 1
}
