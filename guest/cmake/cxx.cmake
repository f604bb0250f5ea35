# C++ guests: clang++ for wasm32-wasi with Debian's libc++ and libc++abi
# (libc++-dev-wasm32, libc++abi-14-dev-wasm32), SDK guest/keel.hpp.
#   keel_cxx_guest(NAME n DIR out_dir SOURCES a.cc...)
# Output: ${DIR}/${NAME}.wasm, a reactor; target keel_guest_${NAME}.

find_program(WASM_CLANGXX NAMES clang++-14 clang++ REQUIRED)
foreach(lib libc++.a libc++abi.a)
  execute_process(COMMAND ${WASM_CLANGXX} --target=wasm32-wasi -print-file-name=${lib}
                  OUTPUT_VARIABLE found OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT IS_ABSOLUTE "${found}")
    message(FATAL_ERROR "C++ guests need ${lib} for wasm32-wasi, which ${WASM_CLANGXX} cannot find: "
                        "run scripts/setup (packages libc++-dev-wasm32 and libc++abi-14-dev-wasm32)")
  endif()
endforeach()

# Exceptions are off (keel.hpp turns allocation failures into a failed
# call); the flags match the command line in guest/README.md.
set(KEEL_CXX_GUEST_FLAGS -std=c++20 -O2 -s -fno-exceptions -mexec-model=reactor
    -Wall -Wextra -Wl,--stack-first)

function(keel_cxx_guest)
  cmake_parse_arguments(G "" "NAME;DIR" "SOURCES" ${ARGN})
  set(out ${G_DIR}/${G_NAME}.wasm)
  set(srcs)
  foreach(s ${G_SOURCES})
    get_filename_component(abs ${s} ABSOLUTE)
    list(APPEND srcs ${abs})
  endforeach()
  add_custom_command(OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${G_DIR}
    COMMAND ${WASM_CLANGXX} --target=wasm32-wasi ${KEEL_CXX_GUEST_FLAGS}
            -I${CMAKE_SOURCE_DIR}/guest ${srcs} -o ${out}
    DEPENDS ${srcs} ${CMAKE_SOURCE_DIR}/guest/keel.h ${CMAKE_SOURCE_DIR}/guest/keel.hpp
    COMMENT "wasm32-wasi (C++) ${G_NAME}.wasm")
  add_custom_target(keel_guest_${G_NAME} ALL DEPENDS ${out})
endfunction()

keel_cxx_guest(NAME csv DIR ${KEEL_GUEST_OUT} SOURCES examples/csv.cc)
keel_cxx_guest(NAME hostile_cxx DIR ${KEEL_GUEST_OUT} SOURCES hostile/cxx.cc)
set(KEEL_CXX_GUESTS csv hostile_cxx)
