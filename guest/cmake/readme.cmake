# The complete examples in guest/README.md, built the way it tells users to
# build them, so that the instructions stay true. Every fenced block that
# follows a line `<!-- file: PATH -->` is written to
# ${KEEL_README_OUT}/PATH at configure time (only when it changed, so that
# builds stay incremental); editing the README reconfigures.
#
# Outputs in ${KEEL_README_OUT} (not served: tests upload them):
# readme_shout.wasm (C), readme_upper.wasm (C++), my_guest.wasm (Rust, the crate
# my-guest next to a copy of keel-guest, as the README lays it out).
# Target: keel_guest_readme_examples.

set(KEEL_README_OUT ${CMAKE_BINARY_DIR}/guest-readme)
set(readme ${CMAKE_CURRENT_SOURCE_DIR}/README.md)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${readme})

# Writes the marked blocks of `readme` under `out`; sets `var` to the list
# of absolute paths written.
function(keel_extract_readme_files readme out var)
  file(READ ${readme} text)
  set(marker "<!-- file: ")
  string(LENGTH "${marker}" marker_len)
  set(paths)
  while(TRUE)
    string(FIND "${text}" "${marker}" at)
    if(at EQUAL -1)
      break()
    endif()
    math(EXPR at "${at} + ${marker_len}")
    string(SUBSTRING "${text}" ${at} -1 text)
    string(FIND "${text}" " -->" end)
    string(SUBSTRING "${text}" 0 ${end} path)
    if(path MATCHES "(^/|\\.\\.)")
      message(FATAL_ERROR "${readme}: file marker '${path}' must be a relative path inside the example")
    endif()
    # The block starts on the line after the opening fence.
    string(FIND "${text}" "```" fence)
    string(SUBSTRING "${text}" ${fence} -1 text)
    string(FIND "${text}" "\n" line_end)
    math(EXPR line_end "${line_end} + 1")
    string(SUBSTRING "${text}" ${line_end} -1 text)
    string(FIND "${text}" "\n```" close)
    if(close EQUAL -1)
      message(FATAL_ERROR "${readme}: the block of ${path} is not closed")
    endif()
    math(EXPR close "${close} + 1")
    string(SUBSTRING "${text}" 0 ${close} content)
    string(SUBSTRING "${text}" ${close} -1 text)
    set(dest ${out}/${path})
    set(old "")
    if(EXISTS ${dest})
      file(READ ${dest} old)
    endif()
    if(NOT old STREQUAL content)
      file(WRITE ${dest} "${content}")
    endif()
    list(APPEND paths ${dest})
  endwhile()
  set(${var} ${paths} PARENT_SCOPE)
endfunction()

keel_extract_readme_files(${readme} ${KEEL_README_OUT} readme_files)
foreach(f shout.c upper.cc my-guest/Cargo.toml my-guest/.cargo/config.toml my-guest/src/lib.rs)
  if(NOT ${KEEL_README_OUT}/${f} IN_LIST readme_files)
    message(FATAL_ERROR "guest/README.md no longer has the example file ${f}")
  endif()
endforeach()

# C and C++: the README's command lines are those of keel_guest() and
# keel_cxx_guest().
keel_guest(NAME readme_shout DIR ${KEEL_README_OUT} REACTOR SOURCES ${KEEL_README_OUT}/shout.c)
keel_cxx_guest(NAME readme_upper DIR ${KEEL_README_OUT} SOURCES ${KEEL_README_OUT}/upper.cc)

# Rust: `cargo build --offline --release --target wasm32-wasi` in the crate,
# with its own .cargo/config.toml and an empty cargo home, so nothing but
# the README's files configures it. The target directory is shared with the
# workspace build to reuse its compiled crates.
set(crate ${KEEL_README_OUT}/my-guest)
file(GLOB_RECURSE keel_guest_sources CONFIGURE_DEPENDS
     ${CMAKE_CURRENT_SOURCE_DIR}/rust/keel-guest/src/*.rs)
set(rust_out ${KEEL_README_OUT}/my_guest.wasm)
add_custom_command(OUTPUT ${rust_out}
  COMMAND ${CMAKE_COMMAND} -E copy_directory ${CMAKE_CURRENT_SOURCE_DIR}/rust/keel-guest
          ${KEEL_README_OUT}/keel-guest
  COMMAND ${KEEL_CARGO_ENV} CARGO_HOME=${KEEL_README_OUT}/cargo-home
          ${KEEL_CARGO} build --offline --release --target wasm32-wasi
  COMMAND ${CMAKE_COMMAND} -E copy ${KEEL_CARGO_OUT}/my_guest.wasm ${rust_out}
  WORKING_DIRECTORY ${crate}
  DEPENDS ${readme_files} ${keel_guest_sources} ${CMAKE_CURRENT_SOURCE_DIR}/rust/keel-guest/Cargo.toml
  COMMENT "cargo build: the README's example crate"
  VERBATIM)
add_custom_target(keel_guest_readme_rust ALL DEPENDS ${rust_out})
# Cargo locks its target directory; running after the workspace build
# avoids waiting on that lock.
add_dependencies(keel_guest_readme_rust keel_rust_guests)

add_custom_target(keel_guest_readme_examples)
add_dependencies(keel_guest_readme_examples keel_guest_readme_shout keel_guest_readme_upper
                 keel_guest_readme_rust)
