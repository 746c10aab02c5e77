package provisioners

import (
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/siderolabs/talos/pkg/machinery/config"
)

// Provisioner names.
const (
	Docker = "docker"
	Qemu   = "qemu"
)

// DefaultTalosVersion is the Talos release this module builds against: the
// version of its Talos machinery (a test keeps them equal), whose image list
// fixtures serves and whose config contract the stand-in node checks.
const DefaultTalosVersion = "v1.13.0"

// EnvTalosImage names a real Talos node image for the docker provisioner,
// e.g. ghcr.io/siderolabs/talos:v1.13.0, used when Spec.Image is empty.
const EnvTalosImage = "PULLTHROUGH_TALOS_IMAGE"

// DefaultCIDR is talosctl's default cluster network.
const DefaultCIDR = "10.5.0.0/24"

// Spec is the shape of a cluster.
type Spec struct {
	// Name names the cluster, its Docker network and its containers.
	Name string
	// Provisioner is Docker (default) or Qemu.
	Provisioner string
	// ControlPlanes must be at least 1.
	ControlPlanes int
	Workers       int
	// Image is the docker provisioner's node image. Default: $PULLTHROUGH_TALOS_IMAGE,
	// else ghcr.io/siderolabs/talos:<TalosVersion>. The Talos version is read
	// from the text after the last ':', as talosctl does.
	Image string
	// TalosVersion is the config contract; default: from Image, else DefaultTalosVersion.
	TalosVersion string
	// KubernetesVersion defaults to Talos's default.
	KubernetesVersion string
	// CIDR is the cluster network (default 10.5.0.0/24). Give each test
	// package its own, so two packages never collide.
	CIDR string
	// StateDir keeps the provisioner's state. Default: a temporary directory
	// in New, the user's cache directory in Create.
	StateDir string
	// ConfigPatches apply to all nodes, ControlPlanePatches and WorkerPatches
	// to one kind, in talosctl's --config-patch syntax (inline YAML or JSON
	// patch, or @file).
	ConfigPatches, ControlPlanePatches, WorkerPatches []string
	// Qemu holds what only the qemu provisioner needs.
	Qemu QemuSpec
}

// QemuSpec is the qemu provisioner's boot assets and networking.
type QemuSpec struct {
	KernelPath    string   // vmlinuz of the Talos release
	InitramfsPath string   // initramfs.xz of the Talos release
	CNIBinPath    []string // default: talosctl's, ~/.talos/cni/bin
	CNIConfDir    string
	CNICacheDir   string
}

func (s Spec) withDefaults() Spec {
	if s.Provisioner == "" {
		s.Provisioner = Docker
	}
	if s.CIDR == "" {
		s.CIDR = DefaultCIDR
	}
	if s.Image == "" {
		s.Image = os.Getenv(EnvTalosImage)
	}
	if s.Image == "" {
		v := s.TalosVersion
		if v == "" {
			v = DefaultTalosVersion
		}
		s.Image = "ghcr.io/siderolabs/talos:" + v
	}
	if s.TalosVersion == "" {
		s.TalosVersion = s.Image[strings.LastIndex(s.Image, ":")+1:]
	}
	return s
}

func (s Spec) validate() error {
	if s.Name == "" || strings.ContainsAny(s.Name, " /:") {
		return fmt.Errorf("cluster name %q: want a non-empty name without spaces, '/' or ':'", s.Name)
	}
	if s.Provisioner != Docker && s.Provisioner != Qemu {
		return fmt.Errorf("provisioner %q: want %q or %q", s.Provisioner, Docker, Qemu)
	}
	if s.ControlPlanes < 1 {
		return fmt.Errorf("control planes %d: want at least 1", s.ControlPlanes)
	}
	if s.Workers < 0 {
		return fmt.Errorf("workers %d: want 0 or more", s.Workers)
	}
	p, err := netip.ParsePrefix(s.CIDR)
	if err != nil || !p.Addr().Is4() {
		return fmt.Errorf("cluster CIDR %q: want an IPv4 network such as 10.5.0.0/24", s.CIDR)
	}
	// Gateway, network and broadcast addresses plus one per node.
	if room := 1<<(32-p.Bits()) - 3; room < s.ControlPlanes+s.Workers {
		return fmt.Errorf("cluster CIDR %q holds %d nodes: want room for %d", s.CIDR, max(room, 0), s.ControlPlanes+s.Workers)
	}
	if _, err := config.ParseContractFromVersion(s.TalosVersion); err != nil {
		return fmt.Errorf("talos version %q (from image %q): %w", s.TalosVersion, s.Image, err)
	}
	return nil
}
