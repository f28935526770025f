using System.Runtime.CompilerServices;

// The GPU check (tests/IlgpuMedusa.Kernels.Tests/GpuCheck) runs the kernel conformance suite, which forces kernel paths
// and attention splits through internal members of IlgpuBackend.
[assembly: InternalsVisibleTo("IlgpuMedusa.Kernels.GpuCheck")]
