# cmake --install: libkeel.so with its CMake package (keel::keel) and
# pkg-config file, the public headers, the `keel` binary, the guest SDKs'
# headers, the docs with the embedding example, and the systemd unit of
# `keel serve`. Everything is relative to the prefix, so
# `cmake --install build --prefix DIR` gives a usable tree anywhere; only
# the unit names the binary by its configured path (CMAKE_INSTALL_PREFIX).
include(CMakePackageConfigHelpers)

set(KEEL_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/keel)
set(KEEL_GUEST_INSTALL_DIR ${CMAKE_INSTALL_DATADIR}/keel/guest)
foreach(dir LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${dir}}")
    message(FATAL_ERROR "CMAKE_INSTALL_${dir} must be relative to the prefix (keel's install tree is relocatable)")
  endif()
endforeach()

install(TARGETS keel_lib EXPORT keelTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS keel RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${CMAKE_SOURCE_DIR}/include/keel ${CMAKE_BINARY_DIR}/include/keel
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h")

install(EXPORT keelTargets NAMESPACE keel:: DESTINATION ${KEEL_CMAKE_DIR})
configure_package_config_file(${CMAKE_SOURCE_DIR}/cmake/keelConfig.cmake.in
  ${CMAKE_BINARY_DIR}/package/keelConfig.cmake INSTALL_DESTINATION ${KEEL_CMAKE_DIR}
  PATH_VARS KEEL_GUEST_INSTALL_DIR)
# 0.x: a minor version may break the API, so only the same minor matches.
write_basic_package_version_file(${CMAKE_BINARY_DIR}/package/keelConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/package/keelConfig.cmake
              ${CMAKE_BINARY_DIR}/package/keelConfigVersion.cmake
        DESTINATION ${KEEL_CMAKE_DIR})

file(RELATIVE_PATH KEEL_PC_TO_PREFIX /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
string(REGEX REPLACE "/$" "" KEEL_PC_TO_PREFIX "${KEEL_PC_TO_PREFIX}")
configure_file(${CMAKE_SOURCE_DIR}/cmake/keel.pc.in ${CMAKE_BINARY_DIR}/package/keel.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/package/keel.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

install(FILES ${CMAKE_SOURCE_DIR}/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY ${CMAKE_SOURCE_DIR}/docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR} FILES_MATCHING PATTERN "*.md")
install(DIRECTORY ${CMAKE_SOURCE_DIR}/examples/embed DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)
install(FILES ${CMAKE_SOURCE_DIR}/guest/keel.h ${CMAKE_SOURCE_DIR}/guest/keel.hpp
              ${CMAKE_SOURCE_DIR}/guest/README.md
        DESTINATION ${KEEL_GUEST_INSTALL_DIR})

# `keel serve` as a system service (dist/systemd/keel.service.in).
configure_file(${CMAKE_SOURCE_DIR}/dist/systemd/keel.service.in ${CMAKE_BINARY_DIR}/package/keel.service @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/package/keel.service DESTINATION lib/systemd/system)
