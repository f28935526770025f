namespace IlgpuMedusa.Tests;
