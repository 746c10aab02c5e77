package provisioners

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/siderolabs/talos/cmd/talosctl/cmd/mgmt/cluster/create/clusterops"
	"github.com/siderolabs/talos/cmd/talosctl/cmd/mgmt/cluster/create/clusterops/configmaker"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/bundle"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/provision"
	"github.com/siderolabs/talos/pkg/provision/providers/docker"
	"github.com/siderolabs/talos/pkg/provision/providers/qemu"

	"github.com/pullthrough/pullthrough/cache"
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
	// The in-network caches' container address and ports, when asked for.
	boxAddr  netip.Addr
	boxPorts map[string]int
	// natted: every node reaches the caches from mirrorAddr, one of this
	// host's own (a rootless daemon), so counters per node address are
	// counters per host.
	natted     bool
	mirrorAddr string
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
	p := &Plan{Spec: spec, Mirrors: map[string]string{}}
	skipFallback := o.skipFallback
	var hosts []string // the set's upstream order, then other hosts sorted
	if o.caches != nil {
		addr := o.bridge
		if addr == "" {
			var err error
			if addr, p.natted, err = bridgeAddr(ctx, spec); err != nil {
				return nil, err
			}
		}
		p.mirrorAddr = addr
		if o.single {
			u, err := o.caches.WildcardMirror(addr)
			if err != nil {
				return nil, err
			}
			hosts = append(hosts, "*")
			p.Mirrors["*"] = u
		} else {
			m, err := o.caches.Mirrors(addr)
			if err != nil {
				return nil, err
			}
			for _, c := range o.caches.Caches() {
				hosts = append(hosts, c.Host())
				p.Mirrors[c.Host()] = m[c.Host()]
			}
		}
		skipFallback = skipFallback || o.caches.Mode() == cache.Strict
	}
	if o.inNet != nil {
		if o.caches != nil {
			return nil, fmt.Errorf("cluster %q: WithInNetworkCaches and WithCaches: want one of them", spec.Name)
		}
		addr, ports, mirrors, hs, err := inNetPlan(spec, o.inNet, o.single)
		if err != nil {
			return nil, err
		}
		p.boxAddr, p.boxPorts = addr, ports
		for h, u := range mirrors {
			p.Mirrors[h] = u
		}
		hosts = append(hosts, hs...)
		skipFallback = skipFallback || o.inNet.Mode == cache.Strict
	}
	extra := make([]string, 0, len(o.mirrors))
	for h, u := range o.mirrors {
		if err := checkMirror(h, u); err != nil {
			return nil, err
		}
		if _, ok := p.Mirrors[h]; !ok {
			extra = append(extra, h)
		}
		p.Mirrors[h] = u
	}
	sort.Strings(extra)
	hosts = append(hosts, extra...)
	for _, h := range hosts {
		p.MirrorFlags = append(p.MirrorFlags, h+"="+p.Mirrors[h])
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
	common.ConfigPatch = spec.ConfigPatches
	if skipFallback {
		// talosctl's --registry-mirror cannot say skipFallback; Talos's
		// RegistryMirrorConfig document can.
		common.ConfigPatch = append(append([]string(nil), spec.ConfigPatches...), mirrorPatch(hosts, p.Mirrors))
	} else {
		common.RegistryMirrors = p.MirrorFlags
	}
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
		p.Configs, err = configmaker.GetDockerConfigs(configmaker.DockerOptions{ExtraOps: d, CommonOps: common, Provisioner: quietConfigs{p.prov}})
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
		p.Configs, err = configmaker.GetQemuConfigs(configmaker.QemuOptions{ExtraOps: q, CommonOps: common, Provisioner: quietConfigs{p.prov}})
	}
	if err != nil {
		p.close()
		return nil, fmt.Errorf("cluster %q: generating configs: %w", spec.Name, err)
	}
	return p, nil
}

// quietConfigs is the provisioner as configmaker sees it, with one more
// config bundle option: WithVerbose(false). Talos's bundle is verbose by
// default and then prints "generating PKI and tokens" to stderr; configmaker
// sets no verbosity of its own, and the provisioner's bundle options are the
// one place a caller's option reaches the bundle.
type quietConfigs struct{ provision.Provisioner }

func (q quietConfigs) GenOptions(r provision.NetworkRequest, vc *config.VersionContract) ([]generate.Option, []bundle.Option) {
	gen, bundles := q.Provisioner.GenOptions(r, vc)
	return gen, append(bundles, bundle.WithVerbose(false))
}

func (p *Plan) close() {
	if p.prov != nil {
		p.prov.Close() //nolint:errcheck
		p.prov = nil
	}
}

// Close releases what Configure opened (the provisioner's Docker client).
// A Plan a Cluster was created from is closed with the cluster.
func (p *Plan) Close() error {
	p.close()
	return nil
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

// mirrorPatch is one RegistryMirrorConfig document per host, with
// skipFallback, as a config patch.
func mirrorPatch(hosts []string, mirrors map[string]string) string {
	var b strings.Builder
	for i, h := range hosts {
		if i > 0 {
			b.WriteString("---\n")
		}
		fmt.Fprintf(&b, "apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: %q\nendpoints:\n  - url: %s\nskipFallback: true\n", h, mirrors[h])
	}
	return b.String()
}

// checkMirror names a mirror that is not a registry host and an http(s) URL.
func checkMirror(host, u string) error {
	r, err := url.Parse(u)
	if host == "" || (host != "*" && strings.ContainsAny(host, "/ =*")) || err != nil || (r.Scheme != "http" && r.Scheme != "https") || r.Host == "" {
		return fmt.Errorf("mirror %q=%q: want a registry host and an http:// or https:// URL, such as docker.io=http://172.17.0.1:5000", host, u)
	}
	return nil
}
