//! Writing ONNX models from Rust: the subset of `onnx.proto` (ONNX IR, Apache
//! 2.0) that a feed-forward graph needs, as prost messages with the field
//! numbers of the official schema, and a small graph builder.
//!
//! Only what vecrec's exported models use is declared: graphs of nodes with
//! attributes, float / int64 initialisers stored as `raw_data`, and typed
//! inputs and outputs with symbolic dimensions. Models are written with IR
//! version 8 and the default-domain opset 17, which every ONNX Runtime since
//! 1.13 reads.

use prost::Message;

/// `TensorProto.DataType.FLOAT`.
pub const FLOAT: i32 = 1;
/// `TensorProto.DataType.INT64`.
pub const INT64: i32 = 7;
/// IR version written.
pub const IR_VERSION: i64 = 8;
/// Default-domain opset written.
pub const OPSET: i64 = 17;

/// `ModelProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    /// Field 1.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// Field 2.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// Field 3.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// Field 6.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// Field 7.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Field 8.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
}

/// `OperatorSetIdProto`.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    /// Field 1 (empty = the default ONNX domain).
    #[prost(string, tag = "1")]
    pub domain: String,
    /// Field 2.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `GraphProto`.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    /// Field 1.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Field 2.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Field 5.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Field 11.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Field 12.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// `NodeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    /// Field 1.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Field 2.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Field 3.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Field 4.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// Field 5.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

/// `AttributeProto` (the int, float and ints cases).
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    /// Field 1.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Field 2.
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    /// Field 3.
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    /// Field 8.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    /// Field 20: 1 FLOAT, 2 INT, 7 INTS.
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

/// `TensorProto` with `raw_data` (little-endian).
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// Field 1.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// Field 2.
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// Field 8.
    #[prost(string, tag = "8")]
    pub name: String,
    /// Field 9.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

/// `ValueInfoProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    /// Field 1.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Field 2.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `TypeProto` (the tensor case of its oneof, field 1).
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    /// Field 1.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

/// `TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    /// Field 1.
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    /// Field 2.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// `TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    /// Field 1.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<DimensionProto>,
}

/// `TensorShapeProto.Dimension`: a value (field 1) or a symbolic name (field 2).
#[derive(Clone, PartialEq, Message)]
pub struct DimensionProto {
    /// Field 1.
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    /// Field 2.
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// A dimension of a graph input or output.
#[derive(Clone, Debug)]
pub enum Dim {
    /// Fixed size.
    Fixed(usize),
    /// Symbolic (batch, sequence length).
    Named(&'static str),
}

/// A node attribute.
#[derive(Clone, Debug)]
pub enum Attr {
    /// `INT`.
    Int(i64),
    /// `FLOAT`.
    Float(f32),
    /// `INTS`.
    Ints(Vec<i64>),
}

/// Builds one graph.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    counter: usize,
}

fn value_info(name: &str, elem: i32, dims: &[Dim]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: elem,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Dim::Fixed(n) => DimensionProto {
                                dim_value: Some(*n as i64),
                                dim_param: None,
                            },
                            Dim::Named(s) => DimensionProto {
                                dim_value: None,
                                dim_param: Some((*s).to_owned()),
                            },
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

impl GraphBuilder {
    /// An empty graph.
    pub fn new(name: &str) -> Self {
        Self {
            graph: GraphProto {
                name: name.to_owned(),
                ..Default::default()
            },
            counter: 0,
        }
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem: i32, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, elem, dims));
        name.to_owned()
    }

    /// Declares a graph output (an existing value, renamed through `Identity`).
    pub fn output(&mut self, value: &str, name: &str, elem: i32, dims: &[Dim]) {
        self.node("Identity", &[value], name, &[]);
        self.graph.output.push(value_info(name, elem, dims));
    }

    /// A float initialiser of shape `dims`.
    pub fn weight(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        self.graph.initializer.push(TensorProto {
            dims: dims.iter().map(|d| *d as i64).collect(),
            data_type: FLOAT,
            name: name.to_owned(),
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name.to_owned()
    }

    /// An int64 initialiser (axes, shapes).
    pub fn ints(&mut self, data: &[i64]) -> String {
        self.counter += 1;
        let name = format!("const_{}", self.counter);
        self.graph.initializer.push(TensorProto {
            dims: vec![data.len() as i64],
            data_type: INT64,
            name: name.clone(),
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    /// A scalar float initialiser.
    pub fn scalar(&mut self, v: f32) -> String {
        self.counter += 1;
        let name = format!("const_{}", self.counter);
        self.graph.initializer.push(TensorProto {
            dims: vec![],
            data_type: FLOAT,
            name: name.clone(),
            raw_data: v.to_le_bytes().to_vec(),
        });
        name
    }

    /// Adds a node with one output; `out` empty makes a fresh name.
    pub fn node(&mut self, op: &str, inputs: &[&str], out: &str, attrs: &[(&str, Attr)]) -> String {
        self.counter += 1;
        let out = if out.is_empty() {
            format!("{}_{}", op.to_lowercase(), self.counter)
        } else {
            out.to_owned()
        };
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![out.clone()],
            name: format!("n{}_{op}", self.counter),
            op_type: op.to_owned(),
            attribute: attrs
                .iter()
                .map(|(name, a)| match a {
                    Attr::Int(i) => AttributeProto {
                        name: (*name).to_owned(),
                        i: Some(*i),
                        r#type: 2,
                        ..Default::default()
                    },
                    Attr::Float(f) => AttributeProto {
                        name: (*name).to_owned(),
                        f: Some(*f),
                        r#type: 1,
                        ..Default::default()
                    },
                    Attr::Ints(v) => AttributeProto {
                        name: (*name).to_owned(),
                        ints: v.clone(),
                        r#type: 7,
                        ..Default::default()
                    },
                })
                .collect(),
        });
        out
    }

    /// Shorthand for a node with a fresh output name and no attributes.
    pub fn op(&mut self, op: &str, inputs: &[&str]) -> String {
        self.node(op, inputs, "", &[])
    }

    /// The serialised model.
    pub fn finish(self, doc: &str) -> Vec<u8> {
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "vecrec".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.to_owned(),
            graph: Some(self.graph),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
        }
        .encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_round_trips_through_prost() {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", FLOAT, &[Dim::Named("batch"), Dim::Fixed(2)]);
        let w = g.weight("w", &[2, 1], &[1.0, 2.0]);
        let y = g.op("MatMul", &[&x, &w]);
        g.output(&y, "y", FLOAT, &[Dim::Named("batch"), Dim::Fixed(1)]);
        let bytes = g.finish("doc");
        let m = ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = m.graph.unwrap();
        assert_eq!(graph.node.len(), 2);
        assert_eq!(graph.node[0].op_type, "MatMul");
        assert_eq!(graph.initializer[0].raw_data.len(), 8);
        assert_eq!(m.opset_import[0].version, OPSET);
        assert_eq!(graph.output[0].name, "y");
    }
}
