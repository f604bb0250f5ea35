# cpack -G DEB: one Debian package, keel, holding everything cmake --install
# puts in the prefix (library, headers, CMake and pkg-config files, the
# binary, docs, the systemd unit) plus the maintainer scripts of dist/debian.
# Configure with -DCMAKE_INSTALL_PREFIX=/usr so that the library lands in
# Debian's multiarch directory and the unit names /usr/bin/keel
# (scripts/test does).
#
# Runtime dependencies are computed by dpkg-shlibdeps from the binary and
# the library (libmozjs-102-0, libboost-json1.81.0, libsqlite3-0, libpq5,
# libssl3, libfmt9, libspdlog1.10, libc6, libstdc++6, ...), so they follow
# what was actually linked.
set(CPACK_PACKAGE_NAME keel)
set(CPACK_PACKAGE_VENDOR "keel")
set(CPACK_PACKAGE_CONTACT "keel maintainers <keel@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "cancellation-safe WebAssembly calls for C++ and over HTTP")
set(CPACK_PACKAGE_DESCRIPTION "keel runs WebAssembly function calls on dedicated worker \
threads so that a caller may cancel, time out or disconnect at any moment without \
leaving an instance half-run. This package has the `keel` command (run, inspect, \
serve, worker), a systemd unit for `keel serve`, and libkeel with its C++20 headers, \
CMake package (find_package(keel)) and pkg-config file.")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_STRIP_FILES ON)
set(CPACK_GENERATOR DEB)

set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# A shlibs file for libkeel itself (dist/debian/triggers runs ldconfig).
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY ">=")
# The public headers include <tl/expected.hpp>; only builds against keel
# need it.
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "libexpected-dev")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "systemd")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${CMAKE_SOURCE_DIR}/dist/debian/postinst
  ${CMAKE_SOURCE_DIR}/dist/debian/prerm
  ${CMAKE_SOURCE_DIR}/dist/debian/postrm
  ${CMAKE_SOURCE_DIR}/dist/debian/triggers)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)

include(CPack)
