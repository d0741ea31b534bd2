package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// firmwareKey is group \x00 digest: group names never hold a NUL, so one
// group's keys never run into another's.
func firmwareKey(group, digest string) []byte {
	return []byte(group + "\x00" + digest)
}

// UpdateFirmware implements Store.
func (s *Bolt) UpdateFirmware(ctx context.Context, group string, plan func(current []*FirmwareReference) (*FirmwarePlan, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if group == "" {
		return fmt.Errorf("UpdateFirmware needs a group")
	}
	return s.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketFirmware)
		prefix := firmwareKey(group, "")
		var current []*FirmwareReference
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			r := new(FirmwareReference)
			if err := DecodeRecord(v, r); err != nil {
				return fmt.Errorf("decoding firmware reference %q: %w", k, err)
			}
			current = append(current, r)
		}
		p, err := plan(current)
		if err != nil {
			return err
		}
		if p == nil {
			return nil
		}
		for _, r := range p.Put {
			if r.Group != group || r.Digest == "" {
				return fmt.Errorf("firmware update of group %s wrote reference %q of group %q", group, r.Digest, r.Group)
			}
			v, err := json.Marshal(r)
			if err != nil {
				return fmt.Errorf("encoding firmware reference %s: %w", r.Digest, err)
			}
			if err := b.Put(firmwareKey(group, r.Digest), v); err != nil {
				return err
			}
		}
		return appendAudit(tx, p.Audit...)
	})
}

// FirmwareReference implements Store.
func (s *Bolt) FirmwareReference(ctx context.Context, group, digest string) (*FirmwareReference, error) {
	var r FirmwareReference
	if err := s.get(ctx, bucketFirmware, string(firmwareKey(group, digest)), &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// FirmwareReferences implements Store.
func (s *Bolt) FirmwareReferences(ctx context.Context, group string, after FirmwareKey, fn func(*FirmwareReference) bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error {
		var prefix []byte
		if group != "" {
			prefix = firmwareKey(group, "")
		}
		start := prefix
		if after != (FirmwareKey{}) {
			// The first key after: append a NUL, the smallest byte.
			if k := append(firmwareKey(after.Group, after.Digest), 0); bytes.Compare(k, start) > 0 {
				start = k
			}
		}
		c := tx.Bucket(bucketFirmware).Cursor()
		for k, v := c.Seek(start); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			r := new(FirmwareReference)
			if err := DecodeRecord(v, r); err != nil {
				return fmt.Errorf("decoding firmware reference %q: %w", k, err)
			}
			if !fn(r) {
				return nil
			}
		}
		return nil
	})
}
