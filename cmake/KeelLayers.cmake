# The layers of DESIGN.md, enforced by the compiler: a component sees the
# public headers (include/), its own headers and those of the components
# below it, and nothing above. Internal headers are included as
# "component/file.h"; instead of one include directory holding every
# component (src/), each component gets a view: a directory in the build
# tree with links to the source folders it may include from. That view is
# its only internal include directory, so `#include "server/http.h"` in
# src/exec fails to compile ("No such file or directory"); the test
# keel_layering (tests/layering/) proves it.
#
# Targets defined in src/<component>/ (libraries and their tests) get that
# component's view; targets elsewhere (tests/, bench/, fuzz/) see every
# component. keel_set_layer(target layer) picks one explicitly; layer "none"
# adds no include directory at all (a target that must see only what it
# links, e.g. the public API through keel::keel).

# Bottom to top.
set(KEEL_LAYERS base engine abi exec jobs server cli)
set(KEEL_LAYER_ROOT ${CMAKE_BINARY_DIR}/layers)

function(keel_make_layer_views)
  set(below)
  foreach(layer ${KEEL_LAYERS} all)
    if(NOT layer STREQUAL "all")
      list(APPEND below ${layer})
    endif()
    set(view ${KEEL_LAYER_ROOT}/${layer})
    file(MAKE_DIRECTORY ${view})
    foreach(dir ${below})
      if(NOT IS_SYMLINK ${view}/${dir})
        file(CREATE_LINK ${CMAKE_SOURCE_DIR}/src/${dir} ${view}/${dir} SYMBOLIC)
      endif()
    endforeach()
  endforeach()
endfunction()
keel_make_layer_views()

function(keel_set_layer target layer)
  if(NOT layer IN_LIST KEEL_LAYERS AND NOT layer MATCHES "^(all|none)$")
    message(FATAL_ERROR "keel_set_layer(${target} ${layer}): not one of ${KEEL_LAYERS} all none")
  endif()
  set_target_properties(${target} PROPERTIES KEEL_LAYER ${layer})
endfunction()

# The layer of a target without KEEL_LAYER, from the directory defining it.
function(keel_layer_of_dir dir out)
  file(RELATIVE_PATH rel ${CMAKE_SOURCE_DIR} ${dir})
  set(layer all)
  if(rel MATCHES "^src/([^/]+)")
    set(layer ${CMAKE_MATCH_1})
    if(NOT layer IN_LIST KEEL_LAYERS)
      message(FATAL_ERROR "src/${layer}: not a layer of cmake/KeelLayers.cmake (${KEEL_LAYERS})")
    endif()
  endif()
  set(${out} ${layer} PARENT_SCOPE)
endfunction()

function(keel_apply_layers_in dir)
  get_directory_property(targets DIRECTORY ${dir} BUILDSYSTEM_TARGETS)
  foreach(target ${targets})
    get_target_property(type ${target} TYPE)
    if(NOT type MATCHES "^(STATIC_LIBRARY|SHARED_LIBRARY|MODULE_LIBRARY|OBJECT_LIBRARY|EXECUTABLE)$")
      continue()
    endif()
    get_target_property(layer ${target} KEEL_LAYER)
    if(NOT layer)
      keel_layer_of_dir(${dir} layer)
    endif()
    if(layer STREQUAL "none")
      continue()
    endif()
    target_include_directories(${target} PRIVATE
      ${CMAKE_SOURCE_DIR}/include ${CMAKE_BINARY_DIR}/include ${KEEL_LAYER_ROOT}/${layer})
  endforeach()
  get_directory_property(subdirs DIRECTORY ${dir} SUBDIRECTORIES)
  foreach(sub ${subdirs})
    keel_apply_layers_in(${sub})
  endforeach()
endfunction()

# Gives every compiled target of the build its view. Call once, after every
# add_subdirectory.
function(keel_apply_layers)
  keel_apply_layers_in(${CMAKE_SOURCE_DIR})
endfunction()
