// Package talosimages says what a Talos node pulls at boot, for the Talos
// release this module is built against: the one place the version is
// checked. It is a leaf: the Talos machinery's config generation and image
// list, nothing of the provisioners.
package talosimages

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/siderolabs/talos/pkg/images"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/version"
)

// ErrUnknownVersion means the version is not the Talos release (any patch of
// it) whose machinery this build has: one release's machinery cannot say what
// another pulls.
var ErrUnknownVersion = errors.New("unknown Talos version")

// MachineryVersion is the Talos version whose image set this build knows,
// the Talos machinery module's own ("v1.13.0").
func MachineryVersion() string { return version.Tag }

// versionRE is stricter than Talos's own contract parser, which accepts
// anything starting "vX.Y.".
var versionRE = regexp.MustCompile(`^v?(\d+)\.(\d+)(\.\d+)?(-[0-9A-Za-z.-]+)?$`)

var lists sync.Map // contract ("v1.13") -> []string

// List returns the references a Talos node of the given version pulls at
// boot, sorted: Talos's images.List over a control-plane config generated
// for that version with a throwaway secrets bundle, as talosctl generates
// it. Any version but the machinery's (or a patch release of it) is an
// error wrapping ErrUnknownVersion.
func List(talosVersion string) ([]string, error) {
	m := versionRE.FindStringSubmatch(talosVersion)
	if m == nil {
		return nil, fmt.Errorf("listing Talos images for version %q: %w: not a version like %s", talosVersion, ErrUnknownVersion, MachineryVersion())
	}
	key := "v" + m[1] + "." + m[2]
	if l, ok := lists.Load(key); ok {
		return append([]string(nil), l.([]string)...), nil
	}
	l, err := list(talosVersion)
	if err != nil {
		return nil, err
	}
	lists.Store(key, l)
	return append([]string(nil), l...), nil
}

func list(talosVersion string) ([]string, error) {
	contract, err := config.ParseContractFromVersion(talosVersion)
	if err != nil {
		return nil, fmt.Errorf("listing Talos images for version %q: %w: %w", talosVersion, ErrUnknownVersion, err)
	}
	known, err := config.ParseContractFromVersion(MachineryVersion())
	if err != nil {
		return nil, fmt.Errorf("parsing this build's Talos machinery version %q: %w", MachineryVersion(), err)
	}
	if *contract != *known {
		return nil, fmt.Errorf("listing Talos images for version %q: %w: this build's Talos machinery is %s and knows only the %s image set",
			talosVersion, ErrUnknownVersion, MachineryVersion(), known)
	}
	in, err := generate.NewInput("pullthrough", "https://127.0.0.1:6443", constants.DefaultKubernetesVersion,
		generate.WithVersionContract(contract))
	if err != nil {
		return nil, fmt.Errorf("generating Talos %s config input: %w", talosVersion, err)
	}
	cfg, err := in.Config(machine.TypeControlPlane)
	if err != nil {
		return nil, fmt.Errorf("generating Talos %s control-plane config: %w", talosVersion, err)
	}
	tags, err := flatten(cfg)
	if err != nil {
		return nil, fmt.Errorf("listing Talos %s images: %w", talosVersion, err)
	}
	out := make([]string, 0, len(tags))
	for _, t := range tags {
		out = append(out, t.String())
	}
	sort.Strings(out)
	return out, nil
}

// flatten reads every name.Tag field of images.List's struct, so that an
// image Talos adds in a later release is listed without a change here.
// images.List panics on a reference it cannot parse; that becomes an error.
func flatten(cfg config.Config) (tags []name.Tag, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("images.List panicked: %v", r)
		}
	}()
	v := reflect.ValueOf(images.List(cfg))
	for i := range v.NumField() {
		if tag, ok := v.Field(i).Interface().(name.Tag); ok {
			tags = append(tags, tag)
		}
	}
	if len(tags) == 0 {
		return nil, errors.New("images.List returned no images")
	}
	return tags, nil
}
