# cmake -DBUILD_DIR=... -DOK=target -DCASES=target=regex|... -P misuse_check.cmake
# OK must build; each other target must fail to build with an error
# matching its regex (the static_assert of keel/host.h that names the
# mistake).
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${OK}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${OK} should compile (a well-formed typed host function):\n${out}")
endif()
message(STATUS "${OK}: compiles")
string(REPLACE "|" ";" cases "${CASES}")
foreach(entry ${cases})
  string(REGEX REPLACE "=.*" "" target "${entry}")
  string(REGEX REPLACE "^[^=]*=" "" expected "${entry}")
  execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${target}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(rc EQUAL 0)
    message(FATAL_ERROR "${target} compiled: Linker::Define accepted a host function it must refuse")
  endif()
  if(NOT out MATCHES "${expected}")
    message(FATAL_ERROR "${target} failed without saying '${expected}':\n${out}")
  endif()
  message(STATUS "${target}: refused (${expected})")
endforeach()
