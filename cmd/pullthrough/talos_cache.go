package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/siderolabs/talos/pkg/imager/filemap"
)

// Talos's image cache, as `talosctl images cache-create` writes it (Talos
// v1.13 pkg/imager/cache) and a node's registry service reads it:
//
//	manifests/<registry>/<repository>/reference/<tag>          the manifest the tag names
//	manifests/<registry>/<repository>/digest/sha256-<hex>      every manifest by digest
//	blob/sha256-<hex>                                          configs and layers
//
// A registry with a port is written host_port_ ("127.0.0.1_5000_"), as
// Talos does so the tree fits on vfat. The "flat" layout is that tree; the
// "oci" layout (talosctl's default, what an installer or imager takes) is an
// OCI image layout holding one image whose single layer is the tree.
const (
	talosLayoutOCI  = "oci"
	talosLayoutFlat = "flat"
)

// talosCacheDir is the manifests/ directory of an image's repository.
func talosCacheDir(root string, img image) string {
	reg := img.host
	if i := strings.LastIndex(reg, ":"); i > 0 {
		reg = reg[:i] + "_" + reg[i+1:] + "_"
	}
	return filepath.Join(root, "manifests", reg, filepath.FromSlash(img.repo))
}

func talosDigestName(h v1.Hash) string { return h.Algorithm + "-" + h.Hex }

// writeTalosCache writes what pullAll read to dest in Talos's image cache
// format. dest must not exist or be empty, as for talosctl.
func writeTalosCache(dest, kind, platform string, res []pulled) error {
	if kind != talosLayoutOCI && kind != talosLayoutFlat {
		return usagef("--layout %q: expected %s or %s", kind, talosLayoutOCI, talosLayoutFlat)
	}
	if err := checkTalosCacheDest(dest); err != nil {
		return err
	}
	parent := filepath.Dir(filepath.Clean(dest))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	tree, err := os.MkdirTemp(parent, ".pullthrough-talos-cache-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tree)
	if err := os.MkdirAll(filepath.Join(tree, "blob"), 0o755); err != nil {
		return err
	}
	for _, r := range res {
		if err := writeTalosImage(tree, r); err != nil {
			return fmt.Errorf("%s: %w", r.img.ref, err)
		}
	}
	if kind == talosLayoutFlat {
		os.Remove(dest) // an empty directory, or nothing
		return os.Rename(tree, dest)
	}
	return writeTalosCacheOCI(tree, dest, platform)
}

func writeTalosImage(tree string, r pulled) error {
	dir := talosCacheDir(tree, r.img)
	for _, sub := range []string{"reference", "digest"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	write := func(path string, b []byte) error { return os.WriteFile(path, b, 0o644) }
	tag := talosCacheTag(r.img)
	if tag != "" {
		if err := write(filepath.Join(dir, "reference", tag), r.raw); err != nil {
			return err
		}
	}
	if err := write(filepath.Join(dir, "digest", talosDigestName(r.digest)), r.raw); err != nil {
		return err
	}
	for _, im := range r.imgs {
		raw, err := im.RawManifest()
		if err != nil {
			return err
		}
		sum := sha256.Sum256(raw)
		if err := write(filepath.Join(dir, "digest", "sha256-"+hex.EncodeToString(sum[:])), raw); err != nil {
			return err
		}
		cfgName, err := im.ConfigName()
		if err != nil {
			return err
		}
		cfg, err := im.RawConfigFile()
		if err != nil {
			return err
		}
		if err := write(filepath.Join(tree, "blob", talosDigestName(cfgName)), cfg); err != nil {
			return err
		}
		layers, err := im.Layers()
		if err != nil {
			return err
		}
		for _, l := range layers {
			if err := writeTalosBlob(tree, l); err != nil {
				return err
			}
		}
	}
	return nil
}

// talosCacheTag is the tag a reference names, for reference/<tag>: its tag,
// or the one before a digest ("repo:tag@sha256:…"). A reference by digest
// alone gets none; talosctl would file it under "latest", which would make
// a node answer repo:latest with a pinned manifest.
func talosCacheTag(img image) string {
	if !strings.Contains(img.tag, ":") {
		return img.tag
	}
	base, _, ok := strings.Cut(img.ref, "@")
	if !ok || !strings.Contains(base[strings.LastIndex(base, "/")+1:], ":") {
		return "" // no tag, only a registry's port
	}
	t, err := name.NewTag(base)
	if err != nil {
		return ""
	}
	return t.TagStr()
}

// checkTalosCacheDest refuses a destination that exists and is not an
// empty directory, before anything is read.
func checkTalosCacheDest(dest string) error {
	st, err := os.Stat(dest)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case !st.IsDir():
		return usagef("--talos-cache %s: not a directory (Talos's image cache is written into a new or empty directory)", dest)
	}
	if entries, err := os.ReadDir(dest); err != nil || len(entries) > 0 {
		return usagef("--talos-cache %s: the directory is not empty (Talos's image cache is written whole, into a new directory)", dest)
	}
	return nil
}

func writeTalosBlob(tree string, l v1.Layer) error {
	d, err := l.Digest()
	if err != nil {
		return err
	}
	path := filepath.Join(tree, "blob", talosDigestName(d))
	if _, err := os.Stat(path); err == nil {
		return nil // a layer two images share
	}
	rc, err := l.Compressed() // go-containerregistry checks the digest at EOF
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := os.CreateTemp(filepath.Dir(path), ".part-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.ReadFrom(rc); err != nil {
		f.Close()
		return fmt.Errorf("layer %s: %w", d, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// writeTalosCacheOCI packs the tree into one layer of one image in an OCI
// layout at dest, with Talos's own filemap (the packing talosctl uses).
func writeTalosCacheOCI(tree, dest, platform string) error {
	files, err := filemap.Walk(tree, "")
	if err != nil {
		return fmt.Errorf("walking the image cache: %w", err)
	}
	layer, err := filemap.Layer(files)
	if err != nil {
		return fmt.Errorf("packing the image cache: %w", err)
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	if img, err = mutate.CreatedAt(img, v1.Time{Time: time.Now()}); err != nil {
		return err
	}
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return err
	}
	if platform == "all" {
		platform = "linux/amd64" // talosctl's outer platform for "all"
	}
	plat, err := v1.ParsePlatform(platform)
	if err != nil {
		return usagef("--platform %q: %v", platform, err)
	}
	p, err := layout.Write(dest, empty.Index)
	if err != nil {
		return fmt.Errorf("creating the OCI layout %s: %w", dest, err)
	}
	if err := p.AppendImage(img, layout.WithPlatform(*plat)); err != nil {
		return fmt.Errorf("writing the image cache to %s: %w", dest, err)
	}
	return nil
}
