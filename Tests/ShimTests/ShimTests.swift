import CDNNL
import CHDF5
import CMPI
import Storage
import Testing

/// The C shims import, link and answer; MPI and HDF5 are put to work by later stages.
@Suite("C shims")
struct ShimTests {
    @Test("oneDNN is version 2 or newer")
    func dnnl() {
        let v = dnnl_version()!.pointee
        #expect(v.major >= 2)
    }

    @Test("OpenMPI's handles come through the getters without MPI_Init")
    func mpi() {
        var major: Int32 = 0, minor: Int32 = 0
        #expect(MPI_Get_version(&major, &minor) == MPI_SUCCESS)
        #expect(major >= 3)
        #expect(shim_MPI_COMM_WORLD() != nil)
        #expect(shim_MPI_FLOAT() != shim_MPI_DOUBLE())
        #expect(shim_MPI_SUM() != nil)
        #expect(shim_MPI_IN_PLACE() != nil)
    }

    @Test("HDF5's type and property-list constants are valid after H5open")
    func hdf5() {
        // Other suites use HDF5 on other threads meanwhile: hold the library's lock.
        HDF5Lock.locked {
            #expect(H5open() >= 0)
            var major: UInt32 = 0, minor: UInt32 = 0, release: UInt32 = 0
            #expect(H5get_libversion(&major, &minor, &release) >= 0)
            #expect(major == 1 && minor >= 10)
            #expect(shim_H5T_NATIVE_FLOAT() > 0)
            #expect(H5Tget_size(shim_H5T_NATIVE_FLOAT()) == 4)
            #expect(H5Tget_size(shim_H5T_NATIVE_INT64()) == 8)
            #expect(shim_H5P_DATASET_CREATE() > 0)
            #expect(shim_H5F_ACC_TRUNC() != shim_H5F_ACC_RDONLY())
        }
    }
}
