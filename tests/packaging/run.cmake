# cmake -P script: configure, build and run the consumer project in MODE.
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
endfunction()

# The test checks how loftq is found, not how fast the consumer runs: its one
# translation unit compiles at -O1, in about two thirds of the time of -O3.
set(consumer_args -DMODE=${MODE} -DLOFTQ_SOURCE_DIR=${LOFTQ_SOURCE_DIR} -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_CXX_FLAGS_RELEASE=-O1)
if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND} -S ${LOFTQ_SOURCE_DIR} -B ${WORK_DIR}/loftq-build -G ${GENERATOR}
      -DCMAKE_INSTALL_PREFIX=${WORK_DIR}/prefix -DLOFTQ_BUILD_TESTS=OFF -DLOFTQ_BUILD_TOOLS=OFF -DLOFTQ_BUILD_EXAMPLES=OFF
      -DLOFTQ_BUILD_BENCHMARKS=OFF -DLOFTQ_INSTALL=ON)
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/loftq-build)
  run(${CMAKE_COMMAND} --install ${WORK_DIR}/loftq-build)
  list(APPEND consumer_args -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DCONSUMER_INITIALIZE=ON)
endif()
run(${CMAKE_COMMAND} -S ${CMAKE_CURRENT_LIST_DIR}/consumer -B ${WORK_DIR}/consumer-build -G ${GENERATOR} ${consumer_args})
run(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-build)
run(${WORK_DIR}/consumer-build/consumer ${WORK_DIR})
