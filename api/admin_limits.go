package api

import "time"

// Every cap of the admin API lives here: request sizes, batch and page
// sizes, and the server's defaults for pending devices and import staging.
// The server enforces them; enrollctl reads them to size its requests.
const (
	// MaxAdminRequestBytes bounds an admin request: room for a batch of
	// MaxPreregistrationsPerRequest rows, or one import chunk.
	MaxAdminRequestBytes = 8 << 20
	// MaxAdminResponseBytes bounds what enrollctl reads back.
	MaxAdminResponseBytes = 64 << 20
	// MaxPreregistrationsPerRequest bounds one pre-registration batch.
	MaxPreregistrationsPerRequest = 10000

	// MaxSerialLen and MaxGroupLen bound factory fields.
	MaxSerialLen = 128
	MaxGroupLen  = 64
	// MaxLabels bounds the labels of one device; MaxLabelKeyLen and
	// MaxLabelValueLen bound each label.
	MaxLabels        = 16
	MaxLabelKeyLen   = 63
	MaxLabelValueLen = 128
	// MaxReasonLen bounds an operator's free-text reason or comment.
	MaxReasonLen = 256

	// MaxImportRowsPerChunk bounds the rows of one import chunk; the
	// client also keeps each chunk under MaxImportChunkBytes.
	MaxImportRowsPerChunk = 5000
	// MaxImportChunkBytes is the body size enrollctl aims for (below
	// MaxAdminRequestBytes, leaving room for JSON overhead).
	MaxImportChunkBytes = 4 << 20
	// MaxImportRows bounds one import (all its chunks).
	MaxImportRows = 1_000_000
	// MaxOpenImports bounds staged imports not yet committed or aborted.
	MaxOpenImports = 8
	// MaxOpenImportsPerOperator bounds one operator's share of them (by
	// role and name: reissued credentials share it), so that one station
	// that keeps starting imports (or died holding them) cannot lock the
	// other stations out.
	MaxOpenImportsPerOperator = MaxOpenImports / 2
	// ImportStagingTTL is how long a staged import waits for its commit.
	ImportStagingTTL = time.Hour
	// MaxReportedRowErrors bounds the row errors one answer lists; the
	// total is always reported.
	MaxReportedRowErrors = 1000

	// MaxPageSize bounds one page of any listing; DefaultPageSize is used
	// when the request names none. enrollctl follows next_page_token to
	// list everything.
	MaxPageSize     = 1000
	DefaultPageSize = 500
	// MaxDevicesPerAction bounds the devices one approve, deny, revoke or
	// readmit call may change (by ID or by selector).
	MaxDevicesPerAction = 10000

	// MaxConfigBytes bounds a config bundle's JSON object (the same cap as
	// pki.MaxBundleBytes, which signs it).
	MaxConfigBytes = 256 << 10
	// MaxConfigJSONDepth bounds nesting of a config object, the object
	// itself counting as 1. It is one less than pki.MaxJSONDepth, which
	// caps the bundle payload that wraps the config: a config the admin
	// API accepts must also be signable.
	MaxConfigJSONDepth = 63

	// DefaultMaxPending is the default cap on pending device records: a
	// full pending list refuses new strangers with CodeBusy until an
	// operator decides or records expire.
	DefaultMaxPending = 1000
	// DefaultPendingTTL is how long a pending record lives without an
	// operator's decision.
	DefaultPendingTTL = 24 * time.Hour
	// DefaultPendingRetryAfter is the Retry-After a pending device is
	// given.
	DefaultPendingRetryAfter = 30 * time.Second

	// MaxOperatorLifetime bounds an operator credential enrollctl may ask
	// for (pki.MaxLeafLifetime).
	MaxOperatorLifetime = 30 * 24 * time.Hour
	// MaxCSRBytes bounds an operator CSR.
	MaxCSRBytes = 8 << 10

	// MaxFirmwareReferences bounds a group's active (not retired)
	// approved firmware references, and the references of one add or
	// retire request (firmware.MaxReferences).
	MaxFirmwareReferences = 1024
	// MaxFirmwareNameLen bounds a firmware reference's name
	// (firmware.MaxReferenceNameSize).
	MaxFirmwareNameLen = 256
)
