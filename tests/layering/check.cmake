# cmake -DBUILD_DIR=... -DWRONG=a,b -DRIGHT=c,d -P check.cmake
# Each WRONG target must fail to build because an include is not found;
# each RIGHT target (the same source in the layer allowed to include it)
# must build.
string(REPLACE "," ";" wrong "${WRONG}")
string(REPLACE "," ";" right "${RIGHT}")
foreach(target ${right})
  execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${target}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${target} should compile (its layer may include the header):\n${out}")
  endif()
  message(STATUS "${target}: compiles")
endforeach()
foreach(target ${wrong})
  execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${target}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(rc EQUAL 0)
    message(FATAL_ERROR "${target} compiled: an include from a layer above was found")
  endif()
  if(NOT out MATCHES "fatal error: [a-z_/]+\\.h: No such file or directory")
    message(FATAL_ERROR "${target} failed for another reason than the include:\n${out}")
  endif()
  string(REGEX MATCH "fatal error: [^\n]*" why "${out}")
  message(STATUS "${target}: refused (${why})")
endforeach()
