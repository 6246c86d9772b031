# Writes OUT, a header holding the files of the SDK example plugin (DIR) as
# raw string literals, for `qforge new-plugin`. Run at build time, so the
# template is always the example the tests build.
set(content "// Generated from ${DIR} by host/cmake/embed_example.cmake: do not edit.\n#pragma once\n\n")
string(APPEND content "namespace qforge::cli {\nstruct TemplateFile { const char* name; const char* text; };\n")
string(APPEND content "inline constexpr TemplateFile kPluginTemplate[] = {\n")
foreach(name CMakeLists.txt ternary.cpp)
  file(READ "${DIR}/${name}" text)
  string(APPEND content "  {\"${name}\", R\"qforge_example(${text})qforge_example\"},\n")
endforeach()
string(APPEND content "};\n}  // namespace qforge::cli\n")
file(WRITE "${OUT}.tmp" "${content}")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")
