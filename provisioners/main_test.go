package provisioners_test

import (
	"testing"

	"github.com/pullthrough/pullthrough/provisioners"
)

func TestMain(m *testing.M) {
	// The qemu provisioner re-executes this binary to launch VMs.
	provisioners.LaunchQemuIfAsked()
	m.Run()
}
