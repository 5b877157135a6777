// What Bio-Formats (Fiji, OMERO, QuPath, CellProfiler's reader) makes of the files we write.
//
//   java -cp bioformats_package.jar:. OmeProbe OUT.jsonl FILE...
//
// For each FILE, one JSON line in OUT.jsonl: the reader Bio-Formats picked, the files it used,
// per series (= per OME Image) the sizes, DimensionOrder, pixel type, endianness, physical
// sizes with their units, time increment, image and channel names, and for every plane its
// (Z, C, T) and the MD5 of its bytes, and the same for each lower resolution level (a
// pyramid: OME-TIFF SubIFDs, read unflattened as Fiji and QuPath read it); the plates with their wells and well samples; and each
// OME-XML document of the dataset (TIFF ImageDescription or companion file) validated against
// the OME schema bundled in the jar. A FILE named *.ome.xml (an OME-Zarr store's
// OME/METADATA.ome.xml, MetadataOnly) is parsed by Bio-Formats' OME-XML service and reported
// the same way, without planes. One JVM for every file: tests batch their datasets.

import java.io.File;
import java.io.FileOutputStream;
import java.io.OutputStreamWriter;
import java.io.PrintWriter;
import java.io.StringReader;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.List;

import javax.xml.XMLConstants;
import javax.xml.transform.stream.StreamSource;
import javax.xml.validation.Schema;
import javax.xml.validation.SchemaFactory;
import javax.xml.validation.Validator;

import loci.common.DebugTools;
import loci.common.services.ServiceFactory;
import loci.formats.FormatTools;
import loci.formats.ImageReader;
import loci.formats.meta.IMetadata;
import loci.formats.services.OMEXMLService;
import loci.formats.tiff.TiffParser;
import ome.units.quantity.Length;
import ome.units.quantity.Time;
import org.xml.sax.ErrorHandler;
import org.xml.sax.SAXParseException;

public final class OmeProbe {

  private static final String SCHEMA = "/released-schema/2016-06/ome.xsd";

  public static void main(String[] args) throws Exception {
    DebugTools.setRootLevel("ERROR");
    URL xsd = OmeProbe.class.getResource(SCHEMA);
    if (xsd == null) {
      throw new IllegalStateException(SCHEMA + " is not in the Bio-Formats jar");
    }
    Schema schema = SchemaFactory.newInstance(XMLConstants.W3C_XML_SCHEMA_NS_URI).newSchema(xsd);
    OMEXMLService service = new ServiceFactory().getInstance(OMEXMLService.class);
    try (PrintWriter out = new PrintWriter(new OutputStreamWriter(
        new FileOutputStream(args[0]), StandardCharsets.UTF_8))) {
      for (int i = 1; i < args.length; i++) {
        Json line = new Json();
        try {
          line.begin().key("path").str(args[i]);
          probe(args[i], service, schema, line);
          line.end();
        } catch (Throwable e) {  // a file Bio-Formats cannot read is a finding: report it
          line = new Json();
          line.begin().key("path").str(args[i])
              .key("error").str(e.getClass().getName() + ": " + e.getMessage()).end();
        }
        out.println(line);
        out.flush();
      }
    }
  }

  private static void probe(String path, OMEXMLService service, Schema schema, Json out)
      throws Exception {
    if (path.toLowerCase().endsWith(".ome.xml")) {
      metadataOnly(path, service, schema, out);
      return;
    }
    IMetadata meta = service.createOMEXMLMetadata();
    ImageReader reader = new ImageReader();
    reader.setFlattenedResolutions(false);  // a series per image, its levels as resolutions
    reader.setMetadataStore(meta);
    reader.setId(path);
    try {
      out.key("format").str(reader.getFormat());
      String[] used = reader.getUsedFiles();
      out.key("used_files").begin('[');
      for (String f : used) {
        out.str(new File(f).getName());
      }
      out.end(']');
      out.key("series").begin('[');
      for (int s = 0; s < reader.getSeriesCount(); s++) {
        reader.setSeries(s);
        series(reader, meta, s, out);
      }
      out.end(']');
      plates(meta, out);
      out.key("xml").begin('[');
      for (String f : used) {
        validate(f, schema, out);
      }
      out.end(']');
    } finally {
      reader.close();
    }
  }

  private static void series(ImageReader r, IMetadata meta, int s, Json out) throws Exception {
    out.begin();
    out.key("name").str(meta.getImageName(s));
    out.key("size").begin()
        .key("X").num(r.getSizeX()).key("Y").num(r.getSizeY()).key("Z").num(r.getSizeZ())
        .key("C").num(r.getSizeC()).key("T").num(r.getSizeT()).end();
    out.key("dimension_order").str(r.getDimensionOrder());
    out.key("pixel_type").str(FormatTools.getPixelTypeString(r.getPixelType()));
    out.key("little_endian").bool(r.isLittleEndian());
    out.key("rgb").bool(r.isRGB());
    physical(meta, s, out);
    planes(r, out);
    out.key("resolutions").begin('[');  // below the full resolution
    for (int res = 1; res < r.getResolutionCount(); res++) {
      r.setResolution(res);
      out.begin().key("X").num(r.getSizeX()).key("Y").num(r.getSizeY());
      planes(r, out);
      out.end();
    }
    r.setResolution(0);
    out.end(']');
    out.end();
  }

  /** Every plane of the current series and resolution: its (Z, C, T) and MD5. */
  private static void planes(ImageReader r, Json out) throws Exception {
    out.key("planes").begin('[');
    MessageDigest md5 = MessageDigest.getInstance("MD5");
    for (int p = 0; p < r.getImageCount(); p++) {
      int[] zct = r.getZCTCoords(p);
      byte[] bytes = r.openBytes(p);
      out.begin().key("z").num(zct[0]).key("c").num(zct[1]).key("t").num(zct[2])
          .key("md5").str(hex(md5.digest(bytes))).end();
    }
    out.end(']');
  }

  /** An OME-XML document alone: what Bio-Formats' OME-XML service makes of it. */
  private static void metadataOnly(String path, OMEXMLService service, Schema schema, Json out)
      throws Exception {
    String xml = new String(Files.readAllBytes(new File(path).toPath()), StandardCharsets.UTF_8);
    IMetadata meta = service.createOMEXMLMetadata(xml);
    out.key("format").str("OME-XML metadata");
    out.key("series").begin('[');
    for (int s = 0; s < meta.getImageCount(); s++) {
      out.begin().key("name").str(meta.getImageName(s));
      out.key("size").begin()
          .key("X").num(meta.getPixelsSizeX(s).getValue())
          .key("Y").num(meta.getPixelsSizeY(s).getValue())
          .key("Z").num(meta.getPixelsSizeZ(s).getValue())
          .key("C").num(meta.getPixelsSizeC(s).getValue())
          .key("T").num(meta.getPixelsSizeT(s).getValue()).end();
      out.key("dimension_order").str(meta.getPixelsDimensionOrder(s).getValue());
      out.key("pixel_type").str(meta.getPixelsType(s).getValue());
      physical(meta, s, out);
      out.key("metadata_only").bool(meta.getPixelsBinDataCount(s) == 0
          && meta.getTiffDataCount(s) == 0);
      out.end();
    }
    out.end(']');
    plates(meta, out);
    out.key("xml").begin('[');
    validateText(new File(path).getName(), xml, schema, out);
    out.end(']');
  }

  private static void physical(IMetadata meta, int s, Json out) {
    out.key("physical_size").begin();
    length(out, "X", meta.getPixelsPhysicalSizeX(s));
    length(out, "Y", meta.getPixelsPhysicalSizeY(s));
    length(out, "Z", meta.getPixelsPhysicalSizeZ(s));
    out.end();
    Time dt = meta.getPixelsTimeIncrement(s);
    if (dt != null) {
      out.key("time_increment").begin().key("value").num(dt.value().doubleValue())
          .key("unit").str(dt.unit().getSymbol()).end();
    }
    out.key("channels").begin('[');
    for (int c = 0; c < meta.getChannelCount(s); c++) {
      out.str(meta.getChannelName(s, c));
    }
    out.end(']');
  }

  private static void length(Json out, String axis, Length v) {
    if (v != null) {
      out.key(axis).begin().key("value").num(v.value().doubleValue())
          .key("unit").str(v.unit().getSymbol()).end();
    }
  }

  private static void plates(IMetadata meta, Json out) {
    out.key("plates").begin('[');
    for (int p = 0; p < meta.getPlateCount(); p++) {
      out.begin().key("name").str(meta.getPlateName(p))
          .key("rows").num(meta.getPlateRows(p) == null ? -1 : meta.getPlateRows(p).getValue())
          .key("columns")
          .num(meta.getPlateColumns(p) == null ? -1 : meta.getPlateColumns(p).getValue());
      out.key("wells").begin('[');
      for (int w = 0; w < meta.getWellCount(p); w++) {
        out.begin().key("row").num(meta.getWellRow(p, w).getValue())
            .key("column").num(meta.getWellColumn(p, w).getValue());
        out.key("samples").begin('[');
        for (int ws = 0; ws < meta.getWellSampleCount(p, w); ws++) {
          out.begin().key("image").str(meta.getWellSampleImageRef(p, w, ws));
          if (meta.getWellSampleIndex(p, w, ws) != null) {
            out.key("index").num(meta.getWellSampleIndex(p, w, ws).getValue());
          }
          out.end();
        }
        out.end(']').end();
      }
      out.end(']').end();
    }
    out.end(']');
  }

  /** Validates the OME-XML a file of the dataset holds (its TIFF comment, or the file). */
  private static void validate(String file, Schema schema, Json out) throws Exception {
    String lower = file.toLowerCase();
    String xml;
    if (lower.endsWith(".tif") || lower.endsWith(".tiff")) {
      xml = new TiffParser(file).getComment();
    } else {
      xml = new String(Files.readAllBytes(new File(file).toPath()), StandardCharsets.UTF_8);
    }
    validateText(new File(file).getName(), xml, schema, out);
  }

  private static void validateText(String name, String xml, Schema schema, Json out)
      throws Exception {
    List<String> errors = new ArrayList<>();
    if (xml == null) {
      errors.add("no OME-XML");
    } else {
      Validator validator = schema.newValidator();
      validator.setErrorHandler(new ErrorHandler() {
        public void warning(SAXParseException e) { }
        public void error(SAXParseException e) { errors.add(e.getLineNumber() + ": " + e.getMessage()); }
        public void fatalError(SAXParseException e) { errors.add(e.getLineNumber() + ": " + e.getMessage()); }
      });
      try {
        validator.validate(new StreamSource(new StringReader(xml)));
      } catch (SAXParseException e) {
        if (errors.isEmpty()) {
          errors.add(e.getMessage());
        }
      }
    }
    out.begin().key("file").str(name).key("errors").begin('[');
    for (String e : errors) {
      out.str(e);
    }
    out.end(']').end();
  }

  private static String hex(byte[] digest) {
    StringBuilder sb = new StringBuilder();
    for (byte b : digest) {
      sb.append(String.format("%02x", b));
    }
    return sb.toString();
  }

  /** Just enough of a JSON writer: objects, arrays, strings, numbers, booleans. */
  private static final class Json {
    private final StringBuilder sb = new StringBuilder();
    private final List<Character> closers = new ArrayList<>();
    private boolean first = true;

    Json begin() {
      return begin('{');
    }

    Json begin(char open) {
      comma();
      sb.append(open);
      closers.add(open == '{' ? '}' : ']');
      first = true;
      return this;
    }

    Json end() {
      return end('}');
    }

    Json end(char close) {
      char expected = closers.remove(closers.size() - 1);
      if (expected != close) {
        throw new IllegalStateException("JSON nesting");
      }
      sb.append(close);
      first = false;
      return this;
    }

    Json key(String k) {
      comma();
      quote(k);
      sb.append(':');
      first = true;  // the value follows without a comma
      return this;
    }

    Json str(String v) {
      comma();
      if (v == null) {
        sb.append("null");
      } else {
        quote(v);
      }
      first = false;
      return this;
    }

    Json num(double v) {
      comma();
      if (v == Math.rint(v) && Math.abs(v) < 1e15) {
        sb.append((long) v);
      } else {
        sb.append(v);
      }
      first = false;
      return this;
    }

    Json bool(boolean v) {
      comma();
      sb.append(v);
      first = false;
      return this;
    }

    private void comma() {
      if (!first) {
        sb.append(',');
      }
      first = false;
    }

    private void quote(String v) {
      sb.append('"');
      for (char ch : v.toCharArray()) {
        switch (ch) {
          case '"': sb.append("\\\""); break;
          case '\\': sb.append("\\\\"); break;
          case '\n': sb.append("\\n"); break;
          case '\r': sb.append("\\r"); break;
          case '\t': sb.append("\\t"); break;
          default:
            if (ch < 0x20) {
              sb.append(String.format("\\u%04x", (int) ch));
            } else {
              sb.append(ch);
            }
        }
      }
      sb.append('"');
    }

    @Override
    public String toString() {
      return sb.toString();
    }
  }
}
