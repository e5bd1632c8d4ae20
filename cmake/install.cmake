# cmake --install: headers, the static libraries, an exported attnkit::attnkit target with
# attnkitConfig.cmake and attnkitConfigVersion.cmake, and attnkit.pc for pkg-config.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(ATTNKIT_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/attnkit)
install(DIRECTORY include/attnkit DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.hpp")
install(FILES ${PROJECT_BINARY_DIR}/include/attnkit/version.hpp
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/attnkit)
install(TARGETS attnkit attnkit_reference EXPORT attnkitTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(EXPORT attnkitTargets NAMESPACE attnkit:: DESTINATION ${ATTNKIT_CMAKE_DIR})
configure_package_config_file(cmake/attnkitConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/attnkitConfig.cmake
                              INSTALL_DESTINATION ${ATTNKIT_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/attnkitConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/attnkitConfig.cmake
        ${PROJECT_BINARY_DIR}/attnkitConfigVersion.cmake DESTINATION ${ATTNKIT_CMAKE_DIR})
configure_file(cmake/attnkit.pc.in ${PROJECT_BINARY_DIR}/attnkit.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/attnkit.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
if(ATTNKIT_BUILD_CLI AND NOT ATTNKIT_BUILD_PYTHON)
  install(TARGETS attnkit_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
