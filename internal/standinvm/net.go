package standinvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"
)

// Lease is what DHCP gave the node.
type Lease struct {
	Interface string
	Addr      *net.IPNet
	Router    net.IP
	Hostname  string
	MTU       int
}

func (l Lease) String() string {
	return fmt.Sprintf("%s %s via %s hostname %q mtu %d", l.Interface, l.Addr, l.Router, l.Hostname, l.MTU)
}

// waitLink waits for the interface the virtio driver makes: the module
// probes the PCI device asynchronously.
func waitLink(ctx context.Context, name string) (netlink.Link, error) {
	for {
		l, err := netlink.LinkByName(name)
		if err == nil {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for network interface %s: %w (last: %v)", name, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// dhcpUp brings the interface up and configures it from a DHCP lease, as
// Talos's networkd does with the launcher's dhcpd: address, default route,
// MTU and hostname from the offer.
func dhcpUp(ctx context.Context, name string) (Lease, error) {
	link, err := waitLink(ctx, name)
	if err != nil {
		return Lease{}, err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return Lease{}, fmt.Errorf("bringing %s up: %w", name, err)
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		_ = netlink.LinkSetUp(lo) // best effort: nothing here talks to itself
	}
	c, err := nclient4.New(name, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(3))
	if err != nil {
		return Lease{}, fmt.Errorf("starting the DHCP client on %s: %w", name, err)
	}
	defer c.Close()
	var lease *nclient4.Lease
	for {
		lease, err = c.Request(ctx, dhcpv4.WithRequestedOptions(dhcpv4.OptionHostName, dhcpv4.OptionInterfaceMTU, dhcpv4.OptionRouter, dhcpv4.OptionSubnetMask))
		if err == nil {
			break
		}
		// The launcher starts its dhcpd after the control planes' VMs:
		// keep asking until it answers or ctx ends.
		if ctx.Err() != nil {
			return Lease{}, fmt.Errorf("DHCP on %s: %w (last: %v)", name, ctx.Err(), err)
		}
	}
	ack := lease.ACK
	l := Lease{Interface: name, Addr: &net.IPNet{IP: ack.YourIPAddr, Mask: ack.SubnetMask()}, Hostname: ack.HostName()}
	if r := ack.Router(); len(r) > 0 {
		l.Router = r[0]
	}
	if l.Addr.Mask == nil {
		return l, fmt.Errorf("DHCP on %s: the ACK for %s has no subnet mask", name, ack.YourIPAddr)
	}
	if mtu, err := dhcpv4.GetUint16(dhcpv4.OptionInterfaceMTU, ack.Options); err == nil && mtu >= 576 {
		l.MTU = int(mtu)
		if err := netlink.LinkSetMTU(link, l.MTU); err != nil {
			return l, fmt.Errorf("setting MTU %d on %s: %w", l.MTU, name, err)
		}
	}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: l.Addr}); err != nil {
		return l, fmt.Errorf("adding %s to %s: %w", l.Addr, name, err)
	}
	if l.Router != nil {
		err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: l.Router})
		if err != nil && !errors.Is(err, net.ErrClosed) {
			return l, fmt.Errorf("adding the default route via %s: %w", l.Router, err)
		}
	}
	return l, nil
}
