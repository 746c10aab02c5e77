package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
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
                     ctr import or an air-gapped registry; created or appended to.
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
			set, imgs, err := listCaches(cmd, &f, &l, args, cache.Strict)
			if err != nil {
				return err
			}
			defer set.Close()
			res := pullAll(cmd.Context(), set, imgs, l.platform, newProgress(cmd.ErrOrStderr(), len(imgs)))
			var errs []error
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

func writeOCI(dir string, res []pulled) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return fmt.Errorf("creating the OCI layout %s: %w", dir, err)
		}
	}
	for _, r := range res {
		for _, im := range r.imgs {
			if err := p.AppendImage(im, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": r.img.ref})); err != nil {
				return fmt.Errorf("writing %s to %s: %w", r.img.ref, dir, err)
			}
		}
	}
	return nil
}
