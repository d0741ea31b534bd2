package etcdstore

import (
	"context"
	"fmt"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// RevokeOperator implements store.Store. The serial's key is read in the
// transaction, so the commit carries a compare that it is still absent
// (txn.commit compares the mod revision seen, 0, which a key has exactly
// when its create revision is 0): of two servers revoking one serial at
// once, one writes the record and its audit record, the other re-runs,
// finds the record and writes nothing.
func (s *Store) RevokeOperator(ctx context.Context, rev *store.OperatorRevocation, audit *store.AuditRecord) (bool, error) {
	if rev == nil || rev.Serial == "" {
		return false, fmt.Errorf("RevokeOperator needs a serial")
	}
	changed := false
	err := s.update(ctx, func(t *txn) error {
		changed = false
		key := s.k.opRevoked(rev.Serial)
		kv, err := t.getOne(key)
		if err != nil || kv != nil {
			return err // revoked already: no write, no audit
		}
		if err := t.putJSON(key, rev); err != nil {
			return err
		}
		if audit != nil {
			t.appendAudit(audit)
		}
		changed = true
		return nil
	})
	if err != nil {
		return false, err
	}
	return changed, nil
}

// OperatorRevocation implements store.Store.
func (s *Store) OperatorRevocation(ctx context.Context, serial string) (*store.OperatorRevocation, error) {
	return getJSON[store.OperatorRevocation](ctx, s, s.k.opRevoked(serial))
}

// OperatorRevocations implements store.Store.
func (s *Store) OperatorRevocations(ctx context.Context, fn func(*store.OperatorRevocation) bool) error {
	return scanJSON(ctx, s, s.k.opRevokedAll(), end(s.k.opRevokedAll()), fn)
}
