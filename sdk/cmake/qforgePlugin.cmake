# qforge_add_plugin(<name> SOURCES <files...> [OUTPUT_DIRECTORY <dir>] [EXPORTS <symbols...>])
#
# Builds <name> as a qforge plugin: a MODULE library named <name>.so against
# qforge::sdk whose only exported symbol is the ABI entry point
# (qforge_plugin_entry_v<major>), plus any C symbols listed in EXPORTS. A
# linker version script hides everything else, including the weak and unique
# symbols that C++ headers (LibTorch's, the standard library's) would export,
# so two plugins never bind to each other's copies.
# Link further libraries with target_link_libraries(<name> PRIVATE ...).
set(_QFORGE_PLUGIN_CMAKE_DIR "${CMAKE_CURRENT_LIST_DIR}")

function(qforge_add_plugin name)
  cmake_parse_arguments(ARG "" "OUTPUT_DIRECTORY" "SOURCES;EXPORTS" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "qforge_add_plugin(${name}): SOURCES is required")
  endif()
  add_library(${name} MODULE ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE qforge::sdk)
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
