package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/spf13/cobra"

	"github.com/pullthrough/pullthrough/cache"
)

func newExport() *cobra.Command {
	var f cacheFlags
	var l listFlags
	var dir, talosDir, talosLayout string
	cmd := &cobra.Command{
		Use:   "export (--oci DIR | --talos-cache DIR) [REFERENCE...]",
		Short: "Write a list's cached images to an OCI image layout or a Talos image cache",
		Long: `export reads every image of a list from the caches' storage alone (strict mode: nothing is
asked of any upstream) and writes it where another tool can use it:

  --oci DIR          an OCI image layout, each image annotated with its reference
                     (org.opencontainers.image.ref.name), for skopeo, crane, containerd's
                     ctr import or an air-gapped registry; created or added to (an image
                     exported again replaces its entry). Docker media types are written as
                     OCI ones, as skopeo copy --format oci does.
  --talos-cache DIR  Talos's image cache, the format ` + "`talosctl images cache-create`" + ` writes
                     (Talos v1.13 pkg/imager/cache): --layout oci (default, what the imager
                     and installer take) or --layout flat (the directory a node's registry
                     service reads). DIR must be new or empty.

Both may be given; the images are read once. An image that is not fully cached fails the
command (exit 3) before anything is written.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" && talosDir == "" {
				return usagef("say where to write: --oci DIR or --talos-cache DIR")
			}
			if talosLayout != talosLayoutOCI && talosLayout != talosLayoutFlat {
				return usagef("--layout %q: expected %s or %s", talosLayout, talosLayoutOCI, talosLayoutFlat)
			}
			if talosDir != "" {
				if err := checkTalosCacheDest(talosDir); err != nil {
					return err
				}
			}
			imgs, err := l.refs(cmd, args)
			if err != nil {
				return err
			}
			src, err := openSources(cmd, &f, imgs, cache.Strict)
			if err != nil {
				return err
			}
			defer src.Close()
			res := pullAll(cmd.Context(), src, imgs, l.platform, newProgress(cmd.ErrOrStderr(), len(imgs)))
			var errs []error
			for _, file := range src.log.files() {
				errs = append(errs, fmt.Errorf("damaged %s: its bytes do not match its digest; removed (`pullthrough prefetch` fetches it again)", file))
			}
			for _, r := range res {
				if r.err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", r.img.ref, r.err))
				}
			}
			if len(errs) > 0 {
				return fmt.Errorf("%w: %w", errMissing, errors.Join(errs...))
			}
			if dir != "" {
				if err := writeOCI(dir, res); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "wrote %d images to the OCI layout %s\n", len(imgs), dir)
			}
			if talosDir != "" {
				if err := writeTalosCache(talosDir, talosLayout, l.platform, res); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "wrote %d images to the Talos image cache %s (%s layout)\n", len(imgs), talosDir, talosLayout)
			}
			return nil
		},
	}
	f.register(cmd)
	l.register(cmd)
	cmd.Flags().StringVar(&dir, "oci", "", "directory of the OCI image layout to write (created or appended to)")
	cmd.Flags().StringVar(&talosDir, "talos-cache", "", "directory of the Talos image cache to write, as talosctl images cache-create does (new or empty)")
	cmd.Flags().StringVar(&talosLayout, "layout", talosLayoutOCI, "layout of --talos-cache: oci or flat")
	return cmd
}

// refNameKey is the annotation an OCI layout names an image by, which
// skopeo's oci:DIR:REF, crane and ctr import look up.
const refNameKey = "org.opencontainers.image.ref.name"

// writeOCI writes each image into the OCI layout at dir under its
// reference, replacing an entry of the same reference. Images with Docker
// media types are written with OCI ones (the blobs are the same bytes;
// only the manifest changes), as skopeo copy --format oci does: readers of
// OCI layouts such as skopeo 1.9 skip descriptors of any other type.
func writeOCI(dir string, res []pulled) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return fmt.Errorf("creating the OCI layout %s: %w", dir, err)
		}
	}
	for _, r := range res {
		desc, err := writeOCIImage(p, r)
		if err != nil {
			return fmt.Errorf("writing %s to %s: %w", r.img.ref, dir, err)
		}
		desc.Annotations = map[string]string{refNameKey: r.img.ref}
		if err := p.RemoveDescriptors(match.Annotation(refNameKey, r.img.ref)); err != nil {
			return fmt.Errorf("replacing %s in %s: %w", r.img.ref, dir, err)
		}
		if err := p.AppendDescriptor(desc); err != nil {
			return fmt.Errorf("writing %s to %s: %w", r.img.ref, dir, err)
		}
	}
	return nil
}

// writeOCIImage writes the blobs and OCI manifests of one pulled reference
// and returns the descriptor that names it: an image's, or an index's when
// several platforms were read.
func writeOCIImage(p layout.Path, r pulled) (v1.Descriptor, error) {
	var descs []v1.Descriptor
	for _, im := range r.imgs {
		d, err := writeOCIManifest(p, im)
		if err != nil {
			return v1.Descriptor{}, err
		}
		if r.index != nil {
			orig, _ := im.Digest()
			if idx, err := r.index.IndexManifest(); err == nil {
				for _, m := range idx.Manifests {
					if m.Digest == orig {
						d.Platform = m.Platform
					}
				}
			}
		}
		descs = append(descs, d)
	}
	if len(descs) == 1 {
		return descs[0], nil
	}
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: descs}
	return writeOCIJSON(p, types.OCIImageIndex, idx)
}

// writeOCIManifest writes an image's config and layers as they are, and its
// manifest with OCI media types.
func writeOCIManifest(p layout.Path, im v1.Image) (v1.Descriptor, error) {
	m, err := im.Manifest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	cfg, err := im.RawConfigFile()
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := p.WriteBlob(m.Config.Digest, io.NopCloser(bytes.NewReader(cfg))); err != nil {
		return v1.Descriptor{}, err
	}
	layers, err := im.Layers()
	if err != nil {
		return v1.Descriptor{}, err
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return v1.Descriptor{}, err
		}
		rc, err := l.Compressed() // go-containerregistry checks the digest at EOF
		if err != nil {
			return v1.Descriptor{}, err
		}
		err = p.WriteBlob(d, rc)
		rc.Close()
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("layer %s: %w", d, err)
		}
	}
	out := *m
	out.MediaType = types.OCIManifestSchema1
	out.Config.MediaType = ociType(m.Config.MediaType)
	out.Layers = make([]v1.Descriptor, len(m.Layers))
	for i, l := range m.Layers {
		l.MediaType = ociType(l.MediaType)
		out.Layers[i] = l
	}
	return writeOCIJSON(p, types.OCIManifestSchema1, out)
}

// ociType is the OCI media type for a Docker one (the bytes are the same).
func ociType(t types.MediaType) types.MediaType {
	switch t {
	case types.DockerConfigJSON:
		return types.OCIConfigJSON
	case types.DockerLayer:
		return types.OCILayer
	case types.DockerUncompressedLayer:
		return types.OCIUncompressedLayer
	case types.DockerForeignLayer:
		return types.OCIRestrictedLayer
	}
	return t
}

// writeOCIJSON writes a manifest or index blob and returns its descriptor,
// with no artifactType: an image's is not its config's media type.
func writeOCIJSON(p layout.Path, mt types.MediaType, v any) (v1.Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return v1.Descriptor{}, err
	}
	h, size, err := v1.SHA256(bytes.NewReader(b))
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := p.WriteBlob(h, io.NopCloser(bytes.NewReader(b))); err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: mt, Size: size, Digest: h}, nil
}
