package provisioners

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/siderolabs/talos/cmd/talosctl/cmd/mgmt/cluster/create/clusterops"
	"github.com/siderolabs/talos/pkg/bytesize"

	"github.com/pullthrough/pullthrough/internal/standinvm"
)

// EnvQemuAssets names the directory scripts/qemu-up builds the stand-in
// VM's assets into. Default: <user cache dir>/pullthrough/qemu.
const EnvQemuAssets = "PULLTHROUGH_QEMU_ASSETS"

// Names inside the assets directory, as scripts/qemu-up writes them.
const (
	// StandinInitramfsName is the stand-in Talos VM's initramfs: its /init
	// is internal/standinvm. A QemuSpec whose InitramfsPath has this base
	// name gets the stand-in's readiness, as a docker Spec whose image is
	// fixtures' stand-in does.
	StandinInitramfsName = standinvm.InitramfsName
	standinKernelName    = standinvm.KernelName
)

// cniPlugins are the plugins of Talos's qemu CNI chain (bridge, firewall,
// tc-redirect-tap, with static IPAM), as its preflight checks them.
var cniPlugins = []string{"bridge", "firewall", "static", "tc-redirect-tap"}

// QemuAssetsDir is where scripts/qemu-up puts the stand-in VM's kernel,
// initramfs and CNI plugins.
func QemuAssetsDir() (string, error) {
	if d := os.Getenv(EnvQemuAssets); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("finding the qemu assets directory: %w (set %s)", err, EnvQemuAssets)
	}
	return filepath.Join(d, "pullthrough", "qemu"), nil
}

// StandinQemu returns the QemuSpec that boots stand-in Talos VMs: Debian's
// cloud kernel and the stand-in initramfs from QemuAssetsDir, and CNI
// plugins from talosctl's bundle (~/.talos/cni/bin) where it is installed,
// else the ones scripts/qemu-up built (the tc-redirect-tap among them is a
// stand-in of the project's). The error wraps ErrQemuPrerequisite and says
// to run scripts/qemu-up.
func StandinQemu() (QemuSpec, error) {
	dir, err := QemuAssetsDir()
	if err != nil {
		return QemuSpec{}, err
	}
	q := QemuSpec{
		KernelPath:    filepath.Join(dir, standinKernelName),
		InitramfsPath: filepath.Join(dir, StandinInitramfsName),
		CNIConfDir:    filepath.Join(dir, "cni", "conf.d"),
		CNICacheDir:   filepath.Join(dir, "cni", "cache"),
	}
	// libcni looks each plugin up in these directories in order: the real
	// bundle's plugins win wherever it is installed.
	if home, err := os.UserHomeDir(); err == nil {
		talos := filepath.Join(home, ".talos", "cni", "bin")
		if hasAll(talos, cniPlugins) {
			q.CNIBinPath = append(q.CNIBinPath, talos)
		}
	}
	q.CNIBinPath = append(q.CNIBinPath, filepath.Join(dir, "cni", "bin"))
	var missing []string
	for _, p := range []string{q.KernelPath, q.InitramfsPath} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
		}
	}
	if !hasAll(q.CNIBinPath[len(q.CNIBinPath)-1], cniPlugins) && len(q.CNIBinPath) == 1 {
		missing = append(missing, "CNI plugins in "+q.CNIBinPath[0])
	}
	if len(missing) > 0 {
		return q, fmt.Errorf("%w: stand-in VM assets %s (build them with scripts/qemu-up)", ErrQemuPrerequisite, strings.Join(missing, ", "))
	}
	return q, nil
}

func hasAll(dir string, names []string) bool {
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			return false
		}
	}
	return true
}

func isStandinInitramfs(path string) bool {
	return path != "" && filepath.Base(path) == StandinInitramfsName
}

// maxSocketPath is the longest unix socket path Linux takes (sun_path less
// its NUL); QEMU refuses longer ones for the monitor and agent sockets the
// launcher puts in the state directory.
const maxSocketPath = 107

// qemuSocketPathErr names a state directory too deep for QEMU's sockets,
// before anything is created.
func qemuSocketPathErr(spec Spec) error {
	longest := filepath.Join(spec.StateDir, spec.Name, fmt.Sprintf("%s-controlplane-%d.monitor", spec.Name, spec.ControlPlanes))
	if spec.Workers > 0 {
		if w := filepath.Join(spec.StateDir, spec.Name, fmt.Sprintf("%s-worker-%d.monitor", spec.Name, spec.Workers)); len(w) > len(longest) {
			longest = w
		}
	}
	if len(longest) > maxSocketPath {
		return fmt.Errorf("%w: a state directory whose socket paths fit in %d bytes (QEMU's monitor socket would be %s, %d bytes): use a shorter Spec.StateDir or cluster name",
			ErrQemuPrerequisite, maxSocketPath, longest, len(longest))
	}
	return nil
}

// shortStateDir is a temporary state directory for New whose paths QEMU's
// unix sockets can hold (tb.TempDir's seldom can), removed when the test ends.
func shortStateDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "pt-")
	if err != nil {
		tb.Fatalf("provisioners.New: making a state directory: %v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// standinQemuOps fits talosctl's qemu defaults to the stand-in VM: it boots
// its kernel directly (no UEFI firmware, whose start alone takes longer
// than the whole stand-in boot under software emulation, and no
// bootloader), fetches nothing from the Internet (no CNI bundle URL: a
// missing plugin is named by the preflight instead), and needs one vCPU and
// 512 MiB rather than a real node's 2 and 2 GiB.
func standinQemuOps(common *clusterops.Common, q *clusterops.Qemu) {
	q.UefiEnabled = false
	q.BootloaderEnabled = false
	q.CniBundleURL = ""
	for _, r := range []*clusterops.NodeResources{&common.ControlplaneResources, &common.WorkerResources} {
		r.CPU = "1"
		mem := bytesize.WithDefaultUnit("MiB")
		if err := mem.Set("512MiB"); err == nil {
			r.Memory = *mem
		}
	}
}
