package provisioners

import (
	"context"
	"os"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
)

func requireQemuBinary(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-" + qemuArch()); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and no qemu: %v (scripts/qemu-up installs it)", err)
		}
		t.Skipf("qemu is not installed: %v (scripts/qemu-up installs it)", err)
	}
}

// The probe guest itself is sound: under software emulation it reaches its
// exit port, so a failure under KVM is KVM's.
func TestKVMProbeGuestRunsUnderTCG(t *testing.T) {
	requireQemuBinary(t)
	if qemuArch() != "x86_64" {
		t.Skip("the probe guest is x86 code")
	}
	require.NoError(t, runProbe(context.Background(), "tcg"))
}

func TestKVMProbeAnswersEitherWay(t *testing.T) {
	requireQemuBinary(t)
	err := ProbeKVM(context.Background())
	if err != nil {
		require.ErrorIs(t, err, ErrKVMUnavailable)
	}
	t.Logf("KVM here: %v", err)
}
