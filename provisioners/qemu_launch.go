package provisioners

import (
	"errors"
	"flag"
	"fmt"
	"iter"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/siderolabs/go-loadbalancer/loadbalancer"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/provision/providers/qemu"
	"github.com/siderolabs/talos/pkg/provision/providers/vm"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// Talos's qemu provisioner re-executes ClusterRequest.SelfExecutable with
// one of talosctl's hidden commands for each helper process it keeps
// running: the VM launcher, the bridge's DHCP and DNS servers and the API
// load balancer. A test binary serving as talosctl must answer every one of
// them itself: an unknown word would fall through to m.Run, and the helper
// would run the test suite again.
var launchers = map[string]func(args []string) error{
	launchCommand:         func([]string) error { return launchVM() },
	"dhcpd-launch":        dhcpdLaunch,
	"dnsd-launch":         dnsdLaunch,
	"loadbalancer-launch": loadbalancerLaunch,
}

// launchVM is talosctl's qemu-launch, with software emulation where KVM
// opens but does not run guests (see qemu_kvm.go).
func launchVM() error {
	if err := avoidBrokenKVM(os.Stderr); err != nil {
		return err
	}
	return qemu.Launch()
}

// The flags below are talosctl's, as its cmd/talosctl/cmd/mgmt/*_launch.go
// define them, and the bodies call the same vm package functions.

func dhcpdLaunch(args []string) error {
	fs := flag.NewFlagSet("dhcpd-launch", flag.ContinueOnError)
	addr := fs.String("addr", "localhost", "IP addresses to listen on")
	ifName := fs.String("interface", "", "interface to listen on")
	statePath := fs.String("state-path", "", "path to state directory")
	ipxe := fs.String("ipxe-next-handler", "", "iPXE script to chain load")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ips := parseIPs(*addr)
	var eg errgroup.Group
	eg.Go(func() error { return vm.DHCPd(*ifName, ips, *statePath) })
	if *ipxe != "" {
		eg.Go(func() error { return vm.TFTPd(ips, *ipxe) })
	}
	return eg.Wait()
}

func dnsdLaunch(args []string) error {
	fs := flag.NewFlagSet("dnsd-launch", flag.ContinueOnError)
	addr := fs.String("addr", "localhost:53", "IP addresses to listen on")
	resolvConf := fs.String("resolv-conf", "/etc/resolv.conf", "path to resolv file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return vm.DNSd(parseIPs(*addr), *resolvConf)
}

func loadbalancerLaunch(args []string) error {
	fs := flag.NewFlagSet("loadbalancer-launch", flag.ContinueOnError)
	addr := fs.String("loadbalancer-addr", "localhost", "load balancer listen address (IP or host)")
	ports := fs.String("loadbalancer-ports", strconv.Itoa(constants.DefaultControlPlanePort), "load balancer ports")
	upstreams := fs.String("loadbalancer-upstreams", "", "load balancer upstreams (nodes to proxy to)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := zap.NewProductionConfig()
	cfg.Encoding = "console"
	cfg.DisableStacktrace = true
	logger, err := cfg.Build()
	if err != nil {
		return err
	}
	lb := loadbalancer.TCP{Logger: logger}
	var ups []string
	if *upstreams != "" {
		ups = strings.Split(*upstreams, ",")
	}
	for _, p := range strings.Split(*ports, ",") {
		port, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil {
			return fmt.Errorf("load balancer port %q: %w", p, err)
		}
		if err := lb.AddRoute(net.JoinHostPort(*addr, strconv.Itoa(port)), withPort(ups, port)); err != nil {
			return err
		}
	}
	return lb.Run()
}

func withPort(hosts []string, port int) iter.Seq[string] {
	return func(yield func(string) bool) {
		for _, h := range hosts {
			if !yield(net.JoinHostPort(h, strconv.Itoa(port))) {
				return
			}
		}
	}
}

func parseIPs(s string) []net.IP {
	var out []net.IP
	for p := range strings.SplitSeq(s, ",") {
		out = append(out, net.ParseIP(p))
	}
	return out
}

// errUnknownLaunch names a hidden talosctl command this binary does not
// serve (the image cache, KMS, JSON logs, siderolink and virtiofsd helpers,
// which the provisioner starts only when asked for them).
var errUnknownLaunch = errors.New("talosctl helper command not served by this binary")

func isLaunchCommand(arg string) bool {
	_, ok := launchers[arg]
	return ok || (strings.HasSuffix(arg, "-launch") && !strings.HasPrefix(arg, "-"))
}

func knownLaunchers() []string {
	var names []string
	for n := range launchers {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
