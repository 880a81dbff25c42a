// OpenMPI (Debian libopenmpi-dev, pkg-config ompi-c).
#pragma once
#include <mpi.h>

// OpenMPI's handles are macros taking the address of global objects, which Swift
// cannot import; these getters give them to Swift.
static inline MPI_Comm shim_MPI_COMM_WORLD(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype shim_MPI_FLOAT(void) { return MPI_FLOAT; }
static inline MPI_Datatype shim_MPI_DOUBLE(void) { return MPI_DOUBLE; }
static inline MPI_Datatype shim_MPI_INT64_T(void) { return MPI_INT64_T; }
static inline MPI_Datatype shim_MPI_BYTE(void) { return MPI_BYTE; }
static inline MPI_Op shim_MPI_SUM(void) { return MPI_SUM; }
static inline MPI_Op shim_MPI_MAX(void) { return MPI_MAX; }
static inline MPI_Op shim_MPI_MIN(void) { return MPI_MIN; }
static inline void *shim_MPI_IN_PLACE(void) { return MPI_IN_PLACE; }
static inline MPI_Status *shim_MPI_STATUS_IGNORE(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Request shim_MPI_REQUEST_NULL(void) { return MPI_REQUEST_NULL; }
static inline MPI_Errhandler shim_MPI_ERRORS_RETURN(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Info shim_MPI_INFO_NULL(void) { return MPI_INFO_NULL; }
static inline int shim_MPI_THREAD_MULTIPLE(void) { return MPI_THREAD_MULTIPLE; }
static inline int shim_MPI_COMM_TYPE_SHARED(void) { return MPI_COMM_TYPE_SHARED; }
static inline int shim_MPI_MAX_ERROR_STRING(void) { return MPI_MAX_ERROR_STRING; }
