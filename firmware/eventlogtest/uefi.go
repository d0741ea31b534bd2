package eventlogtest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"fmt"
	"math/big"
	"sync"
	"time"
	"unicode/utf16"
)

// GUID is an EFI_GUID in its in-memory (and event log) byte order: Data1,
// Data2 and Data3 little-endian, Data4 as is (UEFI specification, "EFI_GUID").
type GUID [16]byte

// MakeGUID builds a GUID from its textual fields
// (Data1-Data2-Data3-Data4[0:2]-Data4[2:8]).
func MakeGUID(d1 uint32, d2, d3 uint16, d4 [8]byte) GUID {
	var g GUID
	binary.LittleEndian.PutUint32(g[0:4], d1)
	binary.LittleEndian.PutUint16(g[4:6], d2)
	binary.LittleEndian.PutUint16(g[6:8], d3)
	copy(g[8:], d4[:])
	return g
}

// GUIDs of the UEFI specification ("Globally Defined Variables", "Signature
// Database").
var (
	// EFIGlobalVariable is EFI_GLOBAL_VARIABLE: SecureBoot, PK, KEK,
	// BootOrder, Boot####.
	EFIGlobalVariable = MakeGUID(0x8BE4DF61, 0x93CA, 0x11D2, [8]byte{0xAA, 0x0D, 0x00, 0xE0, 0x98, 0x03, 0x2B, 0x8C})
	// EFIImageSecurityDatabase is EFI_IMAGE_SECURITY_DATABASE_GUID: db, dbx.
	EFIImageSecurityDatabase = MakeGUID(0xD719B2CB, 0x3D3A, 0x4596, [8]byte{0xA3, 0xBC, 0xDA, 0xD0, 0x0E, 0x67, 0x65, 0x6F})
	// EFICertX509 is EFI_CERT_X509_GUID (a DER certificate).
	EFICertX509 = MakeGUID(0xA5C059A1, 0x94E4, 0x4AA7, [8]byte{0x87, 0xB5, 0xAB, 0x15, 0x5C, 0x2B, 0xF0, 0x72})
	// EFICertSHA256 is EFI_CERT_SHA256_GUID (a SHA-256 image hash).
	EFICertSHA256 = MakeGUID(0xC1C41626, 0x504C, 0x4092, [8]byte{0xAC, 0xA9, 0x41, 0xF9, 0x36, 0x93, 0x43, 0x28})
	// SignatureOwner is the (made-up) owner GUID of every signature the
	// generator enrolls.
	SignatureOwner = MakeGUID(0x6564_6765, 0x656E, 0x726F, [8]byte{'l', 'l', 't', 'e', 's', 't', 0, 1})
)

// UEFIVariableData encodes UEFI_VARIABLE_DATA (PFP 1.05, "Measuring UEFI
// Variables"): the variable's vendor GUID, the lengths of its name (in
// CHAR16, without a terminator) and of its contents, the UCS-2 name and the
// contents.
func UEFIVariableData(vendor GUID, name string, contents []byte) []byte {
	var b bytes.Buffer
	n := ucs2(name, false)
	b.Write(vendor[:])
	le64(&b, uint64(len(n)/2))
	le64(&b, uint64(len(contents)))
	b.Write(n)
	b.Write(contents)
	return b.Bytes()
}

// ucs2 encodes s as UTF-16LE, with a NUL terminator if nul.
func ucs2(s string, nul bool) []byte {
	u := utf16.Encode([]rune(s))
	if nul {
		u = append(u, 0)
	}
	b := make([]byte, 2*len(u))
	for i, c := range u {
		binary.LittleEndian.PutUint16(b[2*i:], c)
	}
	return b
}

// signatureList encodes one EFI_SIGNATURE_LIST (UEFI specification,
// "Signature Database") of entries of the same size, each an
// EFI_SIGNATURE_DATA (owner + data).
func signatureList(typ GUID, entries ...[]byte) []byte {
	size := 16 + len(entries[0])
	var b bytes.Buffer
	b.Write(typ[:])
	le32(&b, uint32(28+size*len(entries))) // SignatureListSize
	le32(&b, 0)                            // SignatureHeaderSize
	le32(&b, uint32(size))                 // SignatureSize
	for _, e := range entries {
		b.Write(signatureData(e))
	}
	return b.Bytes()
}

// signatureData encodes EFI_SIGNATURE_DATA: SignatureOwner then the data.
func signatureData(data []byte) []byte {
	return append(bytes.Clone(SignatureOwner[:]), data...)
}

func x509SignatureList(certDER []byte) []byte {
	return signatureList(EFICertX509, certDER)
}

func sha256SignatureList(hashes [][]byte) []byte {
	return signatureList(EFICertSHA256, hashes...)
}

// revokedImageHashes are the dbx entries: hashes of images nobody may boot.
func revokedImageHashes() [][]byte {
	var out [][]byte
	for i := 1; i <= 3; i++ {
		h := sha256.Sum256(fmt.Appendf(nil, "edgeenroll revoked boot loader %d", i))
		out = append(out, h[:])
	}
	return out
}

// keys are the DER certificates enrolled in PK, KEK and db.
type keys struct{ pk, kek, db []byte }

// secureBootKeys makes the PK -> KEK -> db chain once per process: Ed25519
// keys from fixed seeds and fixed validity, so the certificates (Ed25519
// signatures are deterministic) are the same bytes on every run.
var secureBootKeys = sync.OnceValue(func() keys {
	type spec struct {
		cn     string
		serial int64
	}
	priv := func(cn string) ed25519.PrivateKey {
		seed := sha256.Sum256([]byte("edgeenroll eventlogtest seed: " + cn))
		return ed25519.NewKeyFromSeed(seed[:])
	}
	var (
		out        keys
		parent     *x509.Certificate
		parentPriv ed25519.PrivateKey
	)
	for i, s := range []spec{
		{"EdgeEnroll Test Platform Key", 1},
		{"EdgeEnroll Test Key Exchange Key", 2},
		{"EdgeEnroll Test Signature Database Key", 3},
	} {
		k := priv(s.cn)
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(s.serial),
			Subject:               pkix.Name{CommonName: s.cn, Organization: []string{"EdgeEnroll Test"}},
			NotBefore:             time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC),
			NotAfter:              time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC),
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		signer, issuer := k, tmpl
		if parent != nil {
			signer, issuer = parentPriv, parent
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, k.Public(), signer)
		if err != nil {
			panic(fmt.Sprintf("eventlogtest: making %s certificate: %v", s.cn, err))
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			panic(fmt.Sprintf("eventlogtest: parsing %s certificate: %v", s.cn, err))
		}
		parent, parentPriv = cert, k
		switch i {
		case 0:
			out.pk = der
		case 1:
			out.kek = der
		case 2:
			out.db = der
		}
	}
	return out
})

// DBCertificate returns the DER certificate enrolled in db (and used as the
// boot loader's EV_EFI_VARIABLE_AUTHORITY).
func DBCertificate() []byte { return bytes.Clone(secureBootKeys().db) }

// SecureBootVariable returns the contents the generator enrolls in the
// secure-boot variable name ("PK", "KEK", "db" or "dbx"), or nil: what a
// test expects the log to have measured.
func SecureBootVariable(name string) []byte {
	k := secureBootKeys()
	switch name {
	case "PK":
		return x509SignatureList(k.pk)
	case "KEK":
		return x509SignatureList(k.kek)
	case "db":
		return x509SignatureList(k.db)
	case "dbx":
		return sha256SignatureList(revokedImageHashes())
	}
	return nil
}

// firmwareVolume stands in for the contents of a firmware volume of a given
// firmware version.
func firmwareVolume(version, name string) []byte {
	var b bytes.Buffer
	for i := range 64 {
		fmt.Fprintf(&b, "_FVH %s of %s, block %d\n", name, version, i)
	}
	return b.Bytes()
}

// platformFirmwareBlob2 encodes UEFI_PLATFORM_FIRMWARE_BLOB2 (PFP 1.05,
// "Event Logging"): a description of at most 255 bytes, base and length.
func platformFirmwareBlob2(desc string, base, length uint64) []byte {
	var b bytes.Buffer
	b.WriteByte(byte(len(desc)))
	b.WriteString(desc)
	le64(&b, base)
	le64(&b, length)
	return b.Bytes()
}

// devicePath encodes a device path of one media file path node (type 4,
// subtype 4, UCS-2 path with terminator) and the end node (UEFI
// specification, "Device Path Protocol").
func devicePath(file string) []byte {
	var b bytes.Buffer
	p := ucs2(file, true)
	b.Write([]byte{0x04, 0x04})
	le16(&b, uint16(4+len(p)))
	b.Write(p)
	b.Write([]byte{0x7F, 0xFF, 0x04, 0x00})
	return b.Bytes()
}

// imageLoadEvent encodes UEFI_IMAGE_LOAD_EVENT (PFP 1.05, "Event Logging").
func imageLoadEvent(addr, length uint64, file string) []byte {
	dp := devicePath(file)
	var b bytes.Buffer
	le64(&b, addr)   // ImageLocationInMemory
	le64(&b, length) // ImageLengthInMemory
	le64(&b, 0)      // ImageLinkTimeAddress
	le64(&b, uint64(len(dp)))
	b.Write(dp)
	return b.Bytes()
}

// loadOption encodes EFI_LOAD_OPTION (UEFI specification, "Load Options"),
// active.
func loadOption(desc, file string) []byte {
	dp := devicePath(file)
	var b bytes.Buffer
	le32(&b, 1) // LOAD_OPTION_ACTIVE
	le16(&b, uint16(len(dp)))
	b.Write(ucs2(desc, true))
	b.Write(dp)
	return b.Bytes()
}
