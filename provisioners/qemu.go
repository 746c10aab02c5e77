package provisioners

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/siderolabs/talos/cmd/talosctl/cmd/mgmt/cluster/create/clusterops"
)

// ErrKVMUnavailable means /dev/kvm is missing: VMs would run under software
// emulation, far too slow to boot Talos.
var ErrKVMUnavailable = errors.New("KVM unavailable")

// ErrQemuPrerequisite marks any other missing piece the qemu provisioner needs.
var ErrQemuPrerequisite = errors.New("qemu prerequisite missing")

// launchCommand is the hidden talosctl command the qemu provisioner runs on
// its own executable to start each VM.
const launchCommand = "qemu-launch"

// LaunchQemuIfAsked makes a test binary serve as talosctl for the qemu
// provisioner, so no talosctl binary is needed. Call it first in TestMain:
// when the provisioner re-executes the binary as "<binary> qemu-launch" (or
// dhcpd-launch, dnsd-launch, loadbalancer-launch), it runs what talosctl's
// hidden command runs and exits; otherwise it returns at once.
//
// The VM launcher uses KVM where KVM runs guests; where /dev/kvm opens but
// a guest does not run (checked by booting a tiny guest with -accel kvm),
// it hides /dev/kvm from itself so that Talos's launcher picks software
// emulation (TCG), and says so at the top of the VM's log.
func LaunchQemuIfAsked() {
	if len(os.Args) < 2 || !isLaunchCommand(os.Args[1]) {
		return
	}
	run, ok := launchers[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "%s: %v (this binary serves %s)\n", os.Args[1], errUnknownLaunch, strings.Join(knownLaunchers(), ", "))
		os.Exit(2)
	}
	if err := run(os.Args[2:]); err != nil {
		// This process is the launcher, not a library caller: its stderr is
		// what the provisioner keeps as the helper's log.
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	os.Exit(0)
}

// QemuPreflight names every missing piece the qemu provisioner needs: root,
// /dev/kvm, the qemu binary, the CNI plugins, the kernel and initramfs.
func QemuPreflight(spec Spec) error {
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, fmt.Errorf("%w: root (it creates a bridge and tap devices); running as uid %d", ErrQemuPrerequisite, os.Geteuid()))
	}
	// A real Talos under software emulation is far too slow to boot; the
	// stand-in VM boots in seconds without KVM.
	if _, err := os.Stat("/dev/kvm"); err != nil && !isStandinInitramfs(spec.Qemu.InitramfsPath) {
		errs = append(errs, fmt.Errorf("%w: /dev/kvm: %v", ErrKVMUnavailable, err))
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		errs = append(errs, fmt.Errorf("%w: iptables not found in PATH (the bridge and firewall CNI plugins use it; Debian: apt-get install iptables)", ErrQemuPrerequisite))
	}
	bin := "qemu-system-" + qemuArch()
	if _, err := exec.LookPath(bin); err != nil {
		errs = append(errs, fmt.Errorf("%w: %s not found in PATH (Debian: apt-get install qemu-system-x86)", ErrQemuPrerequisite, bin))
	}
	cniDirs := spec.Qemu.CNIBinPath
	if len(cniDirs) == 0 {
		cniDirs = clusterops.GetQemu().CniBinPath
	}
	for _, plugin := range []string{"bridge", "firewall", "static", "tc-redirect-tap"} {
		if !existsIn(cniDirs, plugin) {
			errs = append(errs, fmt.Errorf("%w: CNI plugin %q in %v (talosctl's CNI bundle has them; scripts/qemu-up builds them)", ErrQemuPrerequisite, plugin, cniDirs))
		}
	}
	for what, path := range map[string]string{"kernel": spec.Qemu.KernelPath, "initramfs": spec.Qemu.InitramfsPath} {
		if path == "" {
			errs = append(errs, fmt.Errorf("%w: Talos %s path (Spec.Qemu)", ErrQemuPrerequisite, what))
		} else if _, err := os.Stat(path); err != nil {
			errs = append(errs, fmt.Errorf("%w: Talos %s %s: %v", ErrQemuPrerequisite, what, path, err))
		}
	}
	if spec.StateDir != "" {
		if err := qemuSocketPathErr(spec); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("qemu provisioner cannot run here: %w", errors.Join(errs...))
	}
	return nil
}

func qemuArch() string {
	if runtime.GOARCH == "arm64" {
		return "aarch64"
	}
	return "x86_64"
}

func existsIn(dirs []string, name string) bool {
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, name)); err == nil {
			return true
		}
	}
	return false
}
