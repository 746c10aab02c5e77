package main

import (
	"encoding/json"
	"fmt"
	"os"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
)

// A namespace with a veth in it, as the bridge plugin leaves it, gets a tap
// with both redirects; DEL removes the tap, and DEL again (or of a gone
// namespace) succeeds.
func TestAddMakesARedirectedTapAndDelRemovesIt(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: this test needs root (network namespaces)")
		}
		t.Skip("needs root: it makes a network namespace and a veth pair")
	}
	netns, err := testutils.NewNS()
	require.NoError(t, err)
	t.Cleanup(func() { netns.Close(); testutils.UnmountNS(netns) })

	host := fmt.Sprintf("ptv%d", os.Getpid()%100000)
	require.NoError(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: "veth0"}))
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(host); err == nil {
			netlink.LinkDel(l)
		}
	})
	peer, err := netlink.LinkByName("veth0")
	require.NoError(t, err)
	require.NoError(t, netlink.LinkSetNsFd(peer, int(netns.Fd())))

	conf := `{"cniVersion":"0.4.0","name":"t","type":"tc-redirect-tap","prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"veth0","sandbox":"` + netns.Path() + `"}]}}`
	args := &skel.CmdArgs{ContainerID: "vm-1", Netns: netns.Path(), IfName: "veth0", StdinData: []byte(conf)}

	out := captureStdout(t, func() { require.NoError(t, add(args)) })
	var res struct {
		Interfaces []struct{ Name, Mac, Sandbox string }
	}
	require.NoError(t, json.Unmarshal(out, &res), "%s", out)
	require.Len(t, res.Interfaces, 3)
	vm, tap := res.Interfaces[1], res.Interfaces[2]
	assert.Equal(t, tapName, vm.Name)
	assert.Equal(t, "vm-1", vm.Sandbox, "the VM interface is in the container's sandbox")
	assert.Equal(t, tapName, tap.Name)
	assert.Equal(t, netns.Path(), tap.Sandbox)

	require.NoError(t, netns.Do(func(ns.NetNS) error {
		veth, err := netlink.LinkByName("veth0")
		require.NoError(t, err)
		assert.Equal(t, veth.Attrs().HardwareAddr.String(), vm.Mac, "the VM gets the veth's MAC")
		tp, err := netlink.LinkByName(tapName)
		require.NoError(t, err)
		assert.Equal(t, "tuntap", tp.Type())
		for _, l := range []netlink.Link{veth, tp} {
			filters, err := netlink.FilterList(l, netlink.MakeHandle(0xffff, 0))
			require.NoError(t, err)
			assert.Len(t, filters, 1, "%s: one redirect filter", l.Attrs().Name)
		}
		return nil
	}))

	require.NoError(t, del(args))
	require.NoError(t, netns.Do(func(ns.NetNS) error {
		_, err := netlink.LinkByName(tapName)
		assert.Error(t, err, "tap left after DEL")
		return nil
	}))
	assert.NoError(t, del(args), "a second DEL")
	assert.NoError(t, del(&skel.CmdArgs{ContainerID: "vm-1", Netns: "/run/netns/pullthrough-no-such-ns", IfName: "veth0"}), "DEL of a gone namespace")
}

func captureStdout(t *testing.T, f func()) []byte {
	t.Helper()
	r, w, err := os.Pipe()
	require.NoError(t, err)
	old := os.Stdout
	os.Stdout = w
	f()
	os.Stdout = old
	w.Close()
	b := make([]byte, 0, 4096)
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		b = append(b, buf[:n]...)
		if err != nil {
			break
		}
	}
	r.Close()
	return b
}
