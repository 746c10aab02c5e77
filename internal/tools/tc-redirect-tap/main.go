// Command tc-redirect-tap is this project's STAND-IN for the tc-redirect-tap
// CNI plugin (awslabs/tc-redirect-tap, the last link of Talos's qemu CNI
// chain: bridge, firewall, tc-redirect-tap), which the module proxy here
// does not serve. scripts/qemu-up builds it into the project's CNI
// directory only; where talosctl's real CNI bundle is installed
// (~/.talos/cni/bin), the provisioners package puts that directory first,
// and the real plugin is used.
//
// It does the part Talos's launcher relies on: in the VM's network
// namespace, next to the veth the bridge plugin made, it creates a
// persistent tap device, redirects every frame arriving on either device
// to the other with tc (an ingress qdisc and a match-all u32 filter with a
// mirred egress redirect on each), and reports two interfaces as the real
// plugin does: the tap in the namespace, and a "VM" interface of the same
// name in the sandbox named by the container ID that carries the veth's
// MAC, which the launcher gives the VM so that the bridge and the DHCP
// server see the address they expect. DEL removes the tap. It does not
// copy the real plugin's options (tap owner, multi-queue, renaming).
package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tapName is the tap's name in the VM's namespace: one VM per namespace,
// as Talos's launcher makes them.
const tapName = "tap0"

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: add, Del: del, Check: check},
		version.PluginSupports("0.4.0", "1.0.0", "1.1.0"),
		"tc-redirect-tap (pullthrough stand-in): redirect a CNI veth to a tap device for a VM")
}

func parse(args *skel.CmdArgs) (*types.NetConf, *types100.Result, error) {
	conf := &types.NetConf{}
	if err := json.Unmarshal(args.StdinData, conf); err != nil {
		return nil, nil, fmt.Errorf("parsing network config: %w", err)
	}
	if err := version.ParsePrevResult(conf); err != nil {
		return nil, nil, fmt.Errorf("parsing the previous plugin's result: %w", err)
	}
	if conf.PrevResult == nil {
		return conf, nil, nil
	}
	prev, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, nil, fmt.Errorf("converting the previous result: %w", err)
	}
	return conf, prev, nil
}

func add(args *skel.CmdArgs) error {
	conf, prev, err := parse(args)
	if err != nil {
		return err
	}
	if prev == nil {
		return errors.New("tc-redirect-tap must follow a plugin that made an interface (no prevResult)")
	}
	var vmMac, tapMac string
	err = ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		veth, err := netlink.LinkByName(args.IfName)
		if err != nil {
			return fmt.Errorf("finding %s in %s: %w", args.IfName, args.Netns, err)
		}
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: tapName, MTU: veth.Attrs().MTU},
			Mode:      netlink.TUNTAP_MODE_TAP,
			// Single queue, no packet info: what qemu asks for when it
			// opens the tap by name (it adds the vnet header itself).
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_ONE_QUEUE | netlink.TUNTAP_VNET_HDR,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("creating tap %s: %w", tapName, err)
		}
		t, err := netlink.LinkByName(tapName)
		if err != nil {
			return fmt.Errorf("finding the new tap %s: %w", tapName, err)
		}
		for _, l := range []netlink.Link{veth, t} {
			if err := netlink.LinkSetUp(l); err != nil {
				return fmt.Errorf("bringing %s up: %w", l.Attrs().Name, err)
			}
		}
		if err := redirect(veth, t); err != nil {
			return err
		}
		if err := redirect(t, veth); err != nil {
			return err
		}
		vmMac, tapMac = veth.Attrs().HardwareAddr.String(), t.Attrs().HardwareAddr.String()
		return nil
	})
	if err != nil {
		return err
	}
	prev.Interfaces = append(prev.Interfaces,
		&types100.Interface{Name: tapName, Mac: vmMac, Sandbox: args.ContainerID},
		&types100.Interface{Name: tapName, Mac: tapMac, Sandbox: args.Netns},
	)
	return types.PrintResult(prev, conf.CNIVersion)
}

// redirect sends every frame that arrives on from out of to.
func redirect(from, to netlink.Link) error {
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: from.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
	if err := netlink.QdiscAdd(q); err != nil {
		return fmt.Errorf("adding an ingress qdisc to %s: %w", from.Attrs().Name, err)
	}
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: from.Attrs().Index, Parent: netlink.MakeHandle(0xffff, 0), Priority: 1, Protocol: unix.ETH_P_ALL},
		Actions:     []netlink.Action{netlink.NewMirredAction(to.Attrs().Index)},
	}
	if err := netlink.FilterAdd(f); err != nil {
		return fmt.Errorf("redirecting %s to %s: %w", from.Attrs().Name, to.Attrs().Name, err)
	}
	return nil
}

func del(args *skel.CmdArgs) error {
	if args.Netns == "" {
		return nil
	}
	err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		l, err := netlink.LinkByName(tapName)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return nil
			}
			return err
		}
		return netlink.LinkDel(l)
	})
	var gone ns.NSPathNotExistErr
	if errors.As(err, &gone) {
		return nil // DEL must succeed when the namespace is already gone
	}
	if err != nil {
		return fmt.Errorf("removing tap %s: %w", tapName, err)
	}
	return nil
}

func check(args *skel.CmdArgs) error {
	return ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		if _, err := netlink.LinkByName(tapName); err != nil {
			return fmt.Errorf("tap %s: %w", tapName, err)
		}
		return nil
	})
}
