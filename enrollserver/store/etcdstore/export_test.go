package etcdstore

import "context"

// SetListPage sets the page of s's paged listings (PageSize otherwise), so
// tests can page through a few records.
func SetListPage(s *Store, n int) { s.listPage = n }

// ConfigWindow exposes configWindow.
func ConfigWindow(s *Store, ctx context.Context, scope string, hi uint64, page int) (uint64, error) {
	lo, _, err := s.configWindow(ctx, scope, hi, page)
	return lo, err
}
