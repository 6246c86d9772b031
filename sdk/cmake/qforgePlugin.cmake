# qforge_add_plugin(<name> SOURCES <files...> [TORCH] [OUTPUT_DIRECTORY <dir>]
#                   [EXPORTS <symbols...>])
#
# Builds <name> as a qforge plugin: a MODULE library named <name>.so against
# qforge::sdk whose only exported symbol is the ABI entry point
# (qforge_plugin_entry_v<major>), plus any C symbols listed in EXPORTS. A
# linker version script hides everything else, including the weak and unique
# symbols that C++ headers (LibTorch's, the standard library's) would export,
# so two plugins never bind to each other's copies.
#
# TORCH: the plugin uses LibTorch (qforge/cpp/torch.hpp and the helpers built
# on it). Links the LibTorch the host runs on (find_package(Torch); its
# version must be the one `qforge --version` prints, qforge_TORCH_VERSION
# here, or tensors cross the ABI between two LibTorch builds), OpenMP (ATen's
# at::parallel_for is an OpenMP loop in its headers: without -fopenmp it runs
# on one thread), and precompiles <ATen/ATen.h> (an edit then rebuilds in
# seconds rather than ~20 s).
# Link further libraries with target_link_libraries(<name> PRIVATE ...).
set(_QFORGE_PLUGIN_CMAKE_DIR "${CMAKE_CURRENT_LIST_DIR}")

function(_qforge_plugin_use_torch name)
  if(NOT TARGET torch)
    find_package(Torch REQUIRED)
  endif()
  if(DEFINED qforge_TORCH_VERSION AND DEFINED Torch_VERSION AND
     NOT Torch_VERSION VERSION_EQUAL qforge_TORCH_VERSION)
    message(FATAL_ERROR "qforge_add_plugin(${name} TORCH): found LibTorch ${Torch_VERSION}, but "
                        "the qforge host runs on ${qforge_TORCH_VERSION}; point Torch_DIR at it")
  endif()
  find_package(OpenMP REQUIRED COMPONENTS CXX)
  target_link_libraries(${name} PRIVATE torch OpenMP::OpenMP_CXX)
  target_precompile_headers(${name} PRIVATE <ATen/ATen.h>)
endfunction()

function(qforge_add_plugin name)
  cmake_parse_arguments(ARG "TORCH" "OUTPUT_DIRECTORY" "SOURCES;EXPORTS" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "qforge_add_plugin(${name}): SOURCES is required")
  endif()
  add_library(${name} MODULE ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE qforge::sdk)
  if(ARG_TORCH)
    _qforge_plugin_use_torch(${name})
  endif()
  set_target_properties(${name} PROPERTIES
    PREFIX ""
    C_VISIBILITY_PRESET hidden
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(ARG_OUTPUT_DIRECTORY)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${ARG_OUTPUT_DIRECTORY})
  endif()
  if(NOT APPLE AND NOT WIN32)
    set(globals "qforge_plugin_entry_v*;")
    foreach(sym IN LISTS ARG_EXPORTS)
      string(APPEND globals " ${sym};")
    endforeach()
    set(script "${CMAKE_CURRENT_BINARY_DIR}/${name}.exports.map")
    file(WRITE "${script}" "{\n  global: ${globals}\n  local: *;\n};\n")
    # Fail at link time rather than at load time on unresolved symbols.
    target_link_options(${name} PRIVATE -Wl,--no-undefined "-Wl,--version-script=${script}")
    set_property(TARGET ${name} APPEND PROPERTY LINK_DEPENDS "${script}")
  endif()
endfunction()
