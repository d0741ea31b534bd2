package firmware

import (
	"encoding/binary"
	"fmt"
	"unicode/utf16"
)

// efiGUID is an EFI_GUID in its in-memory byte order (Data1..Data3
// little-endian, UEFI specification, "EFI_GUID").
type efiGUID [16]byte

func makeGUID(d1 uint32, d2, d3 uint16, d4 [8]byte) efiGUID {
	var g efiGUID
	binary.LittleEndian.PutUint32(g[0:4], d1)
	binary.LittleEndian.PutUint16(g[4:6], d2)
	binary.LittleEndian.PutUint16(g[6:8], d3)
	copy(g[8:], d4[:])
	return g
}

// Vendor GUIDs of the secure-boot variables (UEFI specification,
// "Globally Defined Variables" and "Signature Database").
var (
	efiGlobalVariable        = makeGUID(0x8BE4DF61, 0x93CA, 0x11D2, [8]byte{0xAA, 0x0D, 0x00, 0xE0, 0x98, 0x03, 0x2B, 0x8C})
	efiImageSecurityDatabase = makeGUID(0xD719B2CB, 0x3D3A, 0x4596, [8]byte{0xA3, 0xBC, 0xDA, 0xD0, 0x0E, 0x67, 0x65, 0x6F})
)

// uefiVariable is a decoded UEFI_VARIABLE_DATA (PFP 1.05, "Measuring UEFI
// Variables").
type uefiVariable struct {
	vendor efiGUID
	name   string
	data   []byte
}

// uefiVariableHeaderSize is VariableName (16), UnicodeNameLength (8) and
// VariableDataLength (8).
const uefiVariableHeaderSize = 32

// parseUEFIVariableData decodes UEFI_VARIABLE_DATA strictly: the lengths
// must account for every byte.
func parseUEFIVariableData(b []byte) (uefiVariable, error) {
	if len(b) < uefiVariableHeaderSize {
		return uefiVariable{}, fmt.Errorf("UEFI_VARIABLE_DATA of %d bytes, shorter than its header", len(b))
	}
	var v uefiVariable
	copy(v.vendor[:], b[:16])
	nameLen := binary.LittleEndian.Uint64(b[16:24])
	dataLen := binary.LittleEndian.Uint64(b[24:32])
	rest := uint64(len(b) - uefiVariableHeaderSize)
	if nameLen > rest/2 || dataLen != rest-2*nameLen {
		return uefiVariable{}, fmt.Errorf("UEFI_VARIABLE_DATA lengths (name %d chars, data %d bytes) do not match its %d bytes", nameLen, dataLen, len(b))
	}
	name := make([]uint16, nameLen)
	for i := range name {
		name[i] = binary.LittleEndian.Uint16(b[uefiVariableHeaderSize+2*i:])
	}
	v.name = string(utf16.Decode(name))
	v.data = b[uefiVariableHeaderSize+2*nameLen:]
	return v, nil
}

// decodeVersion turns EV_S_CRTM_VERSION data into text. The PFP says it is
// a UCS-2 string (usually NUL-terminated); some vendors store ASCII or a
// GUID instead. In order: UCS-2 of printable ASCII characters, then
// printable ASCII bytes (trailing NULs dropped either way), then "0x"
// followed by the data in hex. Empty or all-NUL data, or data over
// MaxVersionSize, gives "".
func decodeVersion(b []byte) string {
	if len(b) == 0 || len(b) > MaxVersionSize {
		return ""
	}
	if len(b)%2 == 0 {
		u := make([]uint16, len(b)/2)
		for i := range u {
			u[i] = binary.LittleEndian.Uint16(b[2*i:])
		}
		for len(u) > 0 && u[len(u)-1] == 0 {
			u = u[:len(u)-1]
		}
		ok := true
		r := make([]byte, len(u))
		for i, c := range u {
			if c < 0x20 || c > 0x7E {
				ok = false
				break
			}
			r[i] = byte(c)
		}
		if ok {
			return string(r)
		}
	}
	t := b
	for len(t) > 0 && t[len(t)-1] == 0 {
		t = t[:len(t)-1]
	}
	ascii := true
	for _, c := range t {
		if c < 0x20 || c > 0x7E {
			ascii = false
			break
		}
	}
	if ascii {
		return string(t)
	}
	return fmt.Sprintf("0x%x", b)
}
