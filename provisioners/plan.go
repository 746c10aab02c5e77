package provisioners

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/siderolabs/talos/cmd/talosctl/cmd/mgmt/cluster/create/clusterops"
	"github.com/siderolabs/talos/cmd/talosctl/cmd/mgmt/cluster/create/clusterops/configmaker"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/provision"
	"github.com/siderolabs/talos/pkg/provision/providers/docker"
	"github.com/siderolabs/talos/pkg/provision/providers/qemu"
)

// Plan is a cluster as talosctl would create it, before anything runs: the
// provisioner's request, its options and the machine configs.
type Plan struct {
	Spec Spec
	// Mirrors maps registry hosts to the cache URLs nodes use.
	Mirrors map[string]string
	// MirrorFlags are the same as talosctl --registry-mirror values.
	MirrorFlags []string
	// Configs is what talosctl's configmaker returned.
	Configs clusterops.ClusterConfigs

	prov provision.Provisioner
}

// Configure builds the cluster request and configs for a spec, through
// talosctl's clusterops and configmaker. It creates nothing, and needs no
// Docker daemon or KVM.
func Configure(ctx context.Context, spec Spec, opts ...Option) (*Plan, error) {
	o := &settings{}
	for _, opt := range opts {
		opt(o)
	}
	spec, err := prepare(spec)
	if err != nil {
		return nil, err
	}
	return configure(ctx, spec, o)
}

// prepare fills a spec's defaults, the state directory among them, and
// checks it.
func prepare(spec Spec) (Spec, error) {
	spec = spec.withDefaults()
	if err := spec.validate(); err != nil {
		return spec, err
	}
	if spec.StateDir == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			return spec, fmt.Errorf("finding a state directory: %w (set Spec.StateDir)", err)
		}
		spec.StateDir = filepath.Join(dir, "pullthrough", "clusters")
	}
	return spec, nil
}

func configure(ctx context.Context, spec Spec, o *settings) (*Plan, error) {
	p := &Plan{Spec: spec}
	if o.caches != nil {
		addr := o.bridge
		if addr == "" {
			var err error
			if addr, err = bridgeAddr(ctx, spec); err != nil {
				return nil, err
			}
		}
		var err error
		if p.Mirrors, err = o.caches.Mirrors(addr); err != nil {
			return nil, err
		}
		if p.MirrorFlags, err = o.caches.MirrorFlags(addr); err != nil {
			return nil, err
		}
	}

	common := clusterops.GetCommon()
	// GetCommon points RootOps at talosctl's package-level flags: copy them,
	// or two clusters made in one process overwrite each other's name.
	root := *common.RootOps
	root.ClusterName = spec.Name
	root.StateDir = spec.StateDir
	common.RootOps = &root
	common.Controlplanes = spec.ControlPlanes
	common.Workers = spec.Workers
	common.NetworkCIDR = spec.CIDR
	common.TalosVersion = spec.TalosVersion
	common.RegistryMirrors = p.MirrorFlags
	common.ConfigPatch = spec.ConfigPatches
	common.ConfigPatchControlPlane = spec.ControlPlanePatches
	common.ConfigPatchWorker = spec.WorkerPatches
	common.TalosconfigDestination = filepath.Join(spec.StateDir, spec.Name, "talosconfig")
	if spec.KubernetesVersion != "" {
		common.KubernetesVersion = spec.KubernetesVersion
	}

	var err error
	switch spec.Provisioner {
	case Docker:
		if p.prov, err = docker.NewProvisioner(ctx); err != nil {
			return nil, fmt.Errorf("making the docker provisioner: %w", err)
		}
		d := clusterops.GetDocker()
		d.TalosImage = spec.Image
		p.Configs, err = configmaker.GetDockerConfigs(configmaker.DockerOptions{ExtraOps: d, CommonOps: common, Provisioner: p.prov})
	case Qemu:
		if p.prov, err = qemu.NewProvisioner(ctx); err != nil {
			return nil, fmt.Errorf("making the qemu provisioner: %w", err)
		}
		q := clusterops.GetQemu()
		q.NodeVmlinuzPath = spec.Qemu.KernelPath
		q.NodeInitramfsPath = spec.Qemu.InitramfsPath
		if len(spec.Qemu.CNIBinPath) > 0 {
			q.CniBinPath = spec.Qemu.CNIBinPath
		}
		if spec.Qemu.CNIConfDir != "" {
			q.CniConfDir = spec.Qemu.CNIConfDir
		}
		if spec.Qemu.CNICacheDir != "" {
			q.CniCacheDir = spec.Qemu.CNICacheDir
		}
		if isStandinInitramfs(spec.Qemu.InitramfsPath) {
			standinQemuOps(&common, &q)
		}
		p.Configs, err = configmaker.GetQemuConfigs(configmaker.QemuOptions{ExtraOps: q, CommonOps: common, Provisioner: p.prov})
	}
	if err != nil {
		p.close()
		return nil, fmt.Errorf("cluster %q: generating configs: %w", spec.Name, err)
	}
	return p, nil
}

func (p *Plan) close() {
	if p.prov != nil {
		p.prov.Close() //nolint:errcheck
	}
}

// NodeConfigs returns each node's machine config as YAML, by node name.
func (p *Plan) NodeConfigs() (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, n := range p.Configs.ClusterRequest.Nodes {
		if n.Config == nil {
			continue
		}
		b, err := n.Config.EncodeBytes()
		if err != nil {
			return nil, fmt.Errorf("node %q: encoding config: %w", n.Name, err)
		}
		out[n.Name] = b
	}
	return out, nil
}

// NodeMirrors loads each node's config back with Talos's configloader and
// returns its registry mirrors: registry host → endpoint URLs, by node name.
func (p *Plan) NodeMirrors() (map[string]map[string][]string, error) {
	cfgs, err := p.NodeConfigs()
	if err != nil {
		return nil, err
	}
	out := map[string]map[string][]string{}
	for node, b := range cfgs {
		cfg, err := configloader.NewFromBytes(b)
		if err != nil {
			return nil, fmt.Errorf("node %q: loading config: %w", node, err)
		}
		m := map[string][]string{}
		for host, mc := range cfg.RegistryMirrorConfigs() {
			for _, e := range mc.Endpoints() {
				m[host] = append(m[host], e.Endpoint())
			}
			sort.Strings(m[host])
		}
		out[node] = m
	}
	return out, nil
}
