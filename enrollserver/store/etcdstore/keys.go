package etcdstore

import (
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// keys is the key layout under one prefix p (which ends in "/"). Values
// are the JSON of the store package's structs, as in the bbolt store.
//
//	sessions/<id>                 Session (with a lease: see lease.go)
//	completed/<id>                completed marker (the session's lease)
//	devices/<id>                  Device
//	status/<status>/<id>          "" (index: devices by status)
//	certs/<serial>                IssuedCertificate
//	devcerts/<id>/<serial>        "" (index: certificates of a device)
//	prereg/<id>                   Preregistration
//	serials/<serial>              device ID (index: serial owner)
//	revocations/<serial>          Revocation
//	oprevoked/<serial>            OperatorRevocation
//	groups/<name>                 Group
//	configs/<scope>\x00<ver hex>  ConfigVersion
//	configlatest/<scope>          newest version of scope (decimal)
//	firmware/<group>\x00<digest>  FirmwareReference
//	audit/<seq hex>               AuditRecord
//	imports/<id>                  ImportBatch
//	importrows/<id>/<line hex>    StagedRow
//	journals/<jid>, journal/<jid>/<chunk hex>   bulk-write journal (bulk.go)
//	locks/bulk/…                  the bulk-write lock (concurrency.Mutex)
//	elect/<role>/…                a role's election (concurrency.Election: lead.go)
//	meta/{schema,audit_seq,crl_number,config_seq}
//
// Fixed-width lowercase hex keeps numeric order equal to key order.
type keys struct{ p string }

func (k keys) meta(name string) string     { return k.p + "meta/" + name }
func (k keys) elect(role string) string    { return k.p + "elect/" + role }
func (k keys) session(id string) string    { return k.p + "sessions/" + id }
func (k keys) sessions() string            { return k.p + "sessions/" }
func (k keys) completed(id string) string  { return k.p + "completed/" + id }
func (k keys) completedAll() string        { return k.p + "completed/" }
func (k keys) device(id string) string     { return k.p + "devices/" + id }
func (k keys) devices() string             { return k.p + "devices/" }
func (k keys) cert(serial string) string   { return k.p + "certs/" + serial }
func (k keys) certs() string               { return k.p + "certs/" }
func (k keys) prereg(id string) string     { return k.p + "prereg/" + id }
func (k keys) preregs() string             { return k.p + "prereg/" }
func (k keys) serial(serial string) string { return k.p + "serials/" + serial }
func (k keys) revocation(s string) string  { return k.p + "revocations/" + s }
func (k keys) revocations() string         { return k.p + "revocations/" }
func (k keys) opRevoked(s string) string   { return k.p + "oprevoked/" + s }
func (k keys) opRevokedAll() string        { return k.p + "oprevoked/" }
func (k keys) group(name string) string    { return k.p + "groups/" + name }
func (k keys) groups() string              { return k.p + "groups/" }
func (k keys) audit(seq uint64) string     { return k.p + "audit/" + hex16(seq) }
func (k keys) auditAll() string            { return k.p + "audit/" }
func (k keys) importBatch(id string) string {
	return k.p + "imports/" + id
}
func (k keys) importBatches() string       { return k.p + "imports/" }
func (k keys) importRows(id string) string { return k.p + "importrows/" + id + "/" }
func (k keys) importRow(id string, line int) string {
	return k.importRows(id) + hex16(uint64(line))
}
func (k keys) statusPrefix(st store.DeviceStatus) string { return k.p + "status/" + string(st) + "/" }
func (k keys) status(st store.DeviceStatus, id string) string {
	return k.statusPrefix(st) + id
}
func (k keys) devCerts(id string) string            { return k.p + "devcerts/" + id + "/" }
func (k keys) devCert(id, serial string) string     { return k.devCerts(id) + serial }
func (k keys) configScope(scope string) string      { return k.p + "configs/" + scope + "\x00" }
func (k keys) config(scope string, v uint64) string { return k.configScope(scope) + hex16(v) }
func (k keys) configs() string                      { return k.p + "configs/" }
func (k keys) configLatest(scope string) string     { return k.p + "configlatest/" + scope }
func (k keys) firmwareGroup(group string) string    { return k.p + "firmware/" + group + "\x00" }
func (k keys) firmware(group, digest string) string { return k.firmwareGroup(group) + digest }
func (k keys) firmwareAll() string                  { return k.p + "firmware/" }
func (k keys) journals() string                     { return k.p + "journals/" }
func (k keys) journalState(jid string) string       { return k.p + "journals/" + jid }
func (k keys) journalChunks(jid string) string      { return k.p + "journal/" + jid + "/" }
func (k keys) journalChunk(jid string, n int) string {
	return k.journalChunks(jid) + fmt.Sprintf("%08x", n)
}
func (k keys) bulkLock() string { return k.p + "locks/bulk" }

// rel is a key without the prefix, for error messages.
func (k keys) rel(key string) string { return strings.TrimPrefix(key, k.p) }

func hex16(n uint64) string { return fmt.Sprintf("%016x", n) }

// end is the end of the range of keys starting with prefix.
func end(prefix string) string { return clientv3.GetPrefixRangeEnd(prefix) }
