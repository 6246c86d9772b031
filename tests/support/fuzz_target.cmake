# qforge_fuzz_target(<name> ROOT <repo root> SCRIPT <tools/…sh> SOURCES <files…>
#                    [LIBS <libs…>] [DEPENDS <targets…>] [STANDALONE]
#                    [SMOKE_ARGS <args…>] [REPLAY_ARGS <args…>])
#
# One libFuzzer target and its replay twin, as both fuzz folders need them:
#  * <name>: the libFuzzer target (sanitizers on), built when the compiler is
#    clang and -fsanitize=fuzzer links; QFORGE_FUZZ=ON requires it (the
#    standalone configure of SCRIPT). In the main build CTest runs a short
#    smoke run, <name>.smoke, with SMOKE_ARGS.
#  * <name>_replay (main build only, any compiler): the same sources with a
#    plain main (QFORGE_FUZZ_REPLAY) run over REPLAY_ARGS as <name>.replay, so
#    fuzz findings stay fixed.
function(qforge_fuzz_target name)
  cmake_parse_arguments(ARG "STANDALONE" "ROOT;SCRIPT"
                        "SOURCES;LIBS;DEPENDS;SMOKE_ARGS;REPLAY_ARGS" ${ARGN})
  if(NOT DEFINED QFORGE_LIBFUZZER_LINKS AND CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    include(CheckCXXSourceCompiles)
    set(CMAKE_REQUIRED_FLAGS "-fsanitize=fuzzer")
    set(CMAKE_REQUIRED_LINK_OPTIONS "-fsanitize=fuzzer")
    check_cxx_source_compiles([[
      #include <cstddef>
      #include <cstdint>
      extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }
    ]] QFORGE_LIBFUZZER_LINKS)
  endif()
  if(QFORGE_FUZZ AND NOT QFORGE_LIBFUZZER_LINKS)
    message(FATAL_ERROR "QFORGE_FUZZ=ON needs clang with libFuzzer (-fsanitize=fuzzer); "
                        "configure with CC=clang CXX=clang++ (see ${ARG_SCRIPT})")
  endif()
  if(QFORGE_LIBFUZZER_LINKS)
    set(flags -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
              -fno-omit-frame-pointer)
    add_executable(${name} ${ARG_SOURCES})
    target_include_directories(${name} PRIVATE ${ARG_ROOT}/host/include)
    target_link_libraries(${name} PRIVATE ${ARG_LIBS})
    target_compile_options(${name} PRIVATE ${flags} -g)
    target_link_options(${name} PRIVATE ${flags})
    if(ARG_DEPENDS)
      add_dependencies(${name} ${ARG_DEPENDS})
    endif()
    if(NOT ARG_STANDALONE)  # a short smoke run; the long runs are SCRIPT's
      add_test(NAME ${name}.smoke COMMAND ${name} -runs=20000 ${ARG_SMOKE_ARGS})
    endif()
  endif()
  if(NOT ARG_STANDALONE)
    add_executable(${name}_replay ${ARG_SOURCES})
    target_compile_definitions(${name}_replay PRIVATE QFORGE_FUZZ_REPLAY)
    target_include_directories(${name}_replay PRIVATE ${ARG_ROOT}/host/include)
    target_link_libraries(${name}_replay PRIVATE ${ARG_LIBS})
    if(ARG_DEPENDS)
      add_dependencies(${name}_replay ${ARG_DEPENDS})
    endif()
    add_test(NAME ${name}.replay COMMAND ${name}_replay ${ARG_REPLAY_ARGS})
  endif()
endfunction()
