# Debian packages SwiftLDM needs, and a function that installs the missing ones.
# Sourced by the Launch/ scripts; not run on its own.

# Build and run: oneDNN, OpenMPI, HDF5 (its OpenMPI flavour), libpng and
# libjpeg-turbo (image folders), the Fashion-MNIST data.
LDM_RUNTIME_PACKAGES="pkg-config zlib1g-dev libdnnl-dev libopenmpi-dev openmpi-bin libhdf5-openmpi-dev libpng-dev libturbojpeg0-dev dataset-fashion-mnist"
# Checks that read our files as users do (h5py), and make and decode test images
# the way users' Python does (Pillow, NumPy); ip and tc for the multi-host rehearsal
# (Launch/netns-hosts).
LDM_CHECK_PACKAGES="python3-h5py hdf5-tools python3-pil python3-numpy iproute2"
# The tests' interchange checks: PyTorch and PyYAML load exported weights with the
# CompVis config beside them; pip brings the PyPI packages below.
LDM_INTEROP_CHECK_PACKAGES="python3-yaml python3-torch libopenblas0 python3-pip"
# What Debian lacks, from PyPI: safetensors and TensorBoard's event reader (with
# its protobuf and absl), installed without dependencies beside the build so that
# Debian's NumPy and PyTorch stay as they are.
LDM_PYPI_CHECK_PACKAGES="safetensors==0.8.0 tensorboard==2.21.0 protobuf==7.36.2 absl-py==2.5.1"
# The emoji recipe: the Noto Color Emoji font, read with fontTools, named with
# the CLDR names of python3-emoji (Launch/make-emoji-folder).
LDM_EMOJI_PACKAGES="fonts-noto-color-emoji python3-fonttools python3-emoji python3-pil"
# Side-by-side benchmarks: Debian's PyTorch with the BLAS it recommends (without
# libopenblas0 its matrix products run on the reference BLAS, ~30x slower).
LDM_BENCH_PACKAGES="python3-torch python3-yaml libopenblas0"

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

# ldm_python_packages DIR: pip-installs LDM_PYPI_CHECK_PACKAGES into DIR for Debian's
# python3 (the tests put DIR on PYTHONPATH), unless DIR already holds these versions.
ldm_python_packages() {
    local dir="$1"
    [ "$(cat "$dir/.versions" 2>/dev/null)" = "$LDM_PYPI_CHECK_PACKAGES" ] && return 0
    echo "installing from PyPI into $dir: $LDM_PYPI_CHECK_PACKAGES" >&2
    rm -rf "$dir"
    /usr/bin/python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dir" $LDM_PYPI_CHECK_PACKAGES
    echo "$LDM_PYPI_CHECK_PACKAGES" > "$dir/.versions"
}

# The Swift toolchain: on PATH, or at /opt/swift.
ldm_swift_path() {
    command -v swift >/dev/null 2>&1 && return 0
    [ -x /opt/swift/usr/bin/swift ] && export PATH="/opt/swift/usr/bin:$PATH" && return 0
    echo "SwiftLDM needs Swift 6 (swift not on PATH and not at /opt/swift)" >&2
    exit 1
}
