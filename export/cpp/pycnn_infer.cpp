// pycnn_infer: classifies Fashion-MNIST test images with a TorchScript model
// exported by `python -m export.torchscript`, from C++ (LibTorch), with
// pycnn's operators linked in (CMakeLists.txt links libpycnn_ops.so with
// --no-as-needed, so its registrations run before the model is loaded).
//
//   pycnn_infer MODEL.pt [--data-dir DIR] [--device cpu|cuda] [--batch-size N]
//               [--limit N] [--predictions FILE]
//
// Images are read from the IDX files (gzip or plain), scaled to [0, 1] and
// resized bilinearly to the model's input size, as training does. Prints the
// accuracy, the latency per batch and the images per second.
#include <torch/script.h>
#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Options {
  std::string model_path;
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  std::string device = "cpu";
  int64_t batch_size = 256;
  int64_t limit = 0;  // 0: every test image
  std::string predictions_path;
};

[[noreturn]] void usage_error(const std::string& message) {
  throw std::invalid_argument(
      message +
      "\nusage: pycnn_infer MODEL.pt [--data-dir DIR] [--device cpu|cuda] [--batch-size N] [--limit N] "
      "[--predictions FILE]");
}

Options parse_options(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        usage_error(arg + " needs a value");
      }
      return argv[++i];
    };
    if (arg == "--data-dir") {
      options.data_dir = value();
    } else if (arg == "--device") {
      options.device = value();
    } else if (arg == "--batch-size") {
      options.batch_size = std::stoll(value());
    } else if (arg == "--limit") {
      options.limit = std::stoll(value());
    } else if (arg == "--predictions") {
      options.predictions_path = value();
    } else if (!arg.empty() && arg[0] == '-') {
      usage_error("unknown option " + arg);
    } else if (options.model_path.empty()) {
      options.model_path = arg;
    } else {
      usage_error("more than one model file given");
    }
  }
  if (options.model_path.empty()) {
    usage_error("no model file given");
  }
  if (options.batch_size < 1) {
    usage_error("--batch-size must be >= 1");
  }
  if (options.device != "cpu" && options.device != "cuda") {
    usage_error("--device must be cpu or cuda");
  }
  return options;
}

// The whole content of a gzip-compressed or plain file (zlib reads both).
std::vector<uint8_t> read_file(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr) {
    throw std::runtime_error("cannot open " + path);
  }
  std::vector<uint8_t> data;
  uint8_t buffer[1 << 16];
  int read;
  while ((read = gzread(file, buffer, sizeof(buffer))) > 0) {
    data.insert(data.end(), buffer, buffer + read);
  }
  const bool failed = read < 0;
  gzclose(file);
  if (failed) {
    throw std::runtime_error("cannot read " + path + " (corrupt gzip data?)");
  }
  return data;
}

uint32_t big_endian_u32(const std::vector<uint8_t>& data, size_t offset) {
  return (uint32_t(data[offset]) << 24) | (uint32_t(data[offset + 1]) << 16) | (uint32_t(data[offset + 2]) << 8) |
      uint32_t(data[offset + 3]);
}

// An IDX file of unsigned bytes: magic 0x00 0x00 0x08 <rank>, then rank
// big-endian sizes, then the data. Returns a uint8 tensor of those sizes.
torch::Tensor read_idx(const std::string& path, int64_t expected_rank) {
  std::vector<uint8_t> data = read_file(path);
  if (data.size() < 4 || data[0] != 0 || data[1] != 0 || data[2] != 0x08 || data[3] != expected_rank) {
    throw std::runtime_error(
        path + ": not an IDX file of unsigned bytes with " + std::to_string(expected_rank) +
        " dimensions (wrong magic number)");
  }
  const size_t header = 4 + 4 * static_cast<size_t>(expected_rank);
  if (data.size() < header) {
    throw std::runtime_error(path + ": truncated header");
  }
  std::vector<int64_t> sizes;
  size_t count = 1;
  for (int64_t d = 0; d < expected_rank; ++d) {
    sizes.push_back(big_endian_u32(data, 4 + 4 * d));
    count *= sizes.back();
  }
  if (data.size() != header + count) {
    throw std::runtime_error(
        path + ": expected " + std::to_string(count) + " bytes of data, found " + std::to_string(data.size() - header));
  }
  return torch::from_blob(data.data() + header, sizes, torch::kUInt8).clone();
}

// The first existing file among the compressed and plain names.
std::string find_file(const std::string& dir, const std::string& stem) {
  for (const std::string& name : {stem + ".gz", stem}) {
    const std::string path = dir + "/" + name;
    if (std::ifstream(path).good()) {
      return path;
    }
  }
  throw std::runtime_error(
      "Fashion-MNIST test file " + stem + "[.gz] not found in " + dir +
      " (install Debian's package dataset-fashion-mnist, or pass --data-dir)");
}

// The model's (C, H, W) input size: its default_input_size attribute, which
// pycnn.models' classes carry into TorchScript.
std::vector<int64_t> input_size_of(const torch::jit::Module& model) {
  if (!model.hasattr("default_input_size")) {
    throw std::runtime_error(
        "the model has no default_input_size attribute: export it with python -m export.torchscript");
  }
  std::vector<int64_t> size;
  for (const auto& element : model.attr("default_input_size").toTupleRef().elements()) {
    size.push_back(element.toInt());
  }
  return size;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values.empty() ? 0.0 : values[values.size() / 2];
}

int run(const Options& options) {
  torch::NoGradGuard no_grad;
  const torch::Device device(options.device);
  if (device.is_cuda() && !torch::cuda::is_available()) {
    throw std::runtime_error("--device cuda: no CUDA device is available");
  }
  torch::jit::Module model = torch::jit::load(options.model_path, device);
  model.eval();
  const std::vector<int64_t> input_size = input_size_of(model);

  torch::Tensor images = read_idx(find_file(options.data_dir, "t10k-images-idx3-ubyte"), 3);
  torch::Tensor labels = read_idx(find_file(options.data_dir, "t10k-labels-idx1-ubyte"), 1).to(torch::kLong);
  int64_t count = images.size(0);
  if (options.limit > 0) {
    count = std::min(count, options.limit);
  }

  std::vector<int64_t> predictions;
  std::vector<double> batch_ms;
  int64_t correct = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t first = 0; first < count; first += options.batch_size) {
    const int64_t n = std::min(options.batch_size, count - first);
    const auto batch_start = std::chrono::steady_clock::now();
    // Scale to [0, 1] and resize as training does (bilinear, align_corners=False).
    torch::Tensor x = images.narrow(0, first, n).unsqueeze(1).to(device).to(torch::kFloat32).div_(255.0);
    if (x.size(2) != input_size[1] || x.size(3) != input_size[2]) {
      x = torch::nn::functional::interpolate(
          x,
          torch::nn::functional::InterpolateFuncOptions()
              .size(std::vector<int64_t>{input_size[1], input_size[2]})
              .mode(torch::kBilinear)
              .align_corners(false));
    }
    if (input_size[0] != 1) {
      x = x.expand({n, input_size[0], input_size[1], input_size[2]}).contiguous();
    }
    torch::Tensor predicted = model.forward({x}).toTensor().argmax(1).cpu();
    if (device.is_cuda()) {
      torch::cuda::synchronize();
    }
    batch_ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - batch_start).count());
    correct += predicted.eq(labels.narrow(0, first, n)).sum().item<int64_t>();
    const int64_t* p = predicted.data_ptr<int64_t>();
    predictions.insert(predictions.end(), p, p + n);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  if (!options.predictions_path.empty()) {
    std::ofstream out(options.predictions_path);
    for (int64_t p : predictions) {
      out << p << '\n';
    }
  }
  std::cout << "model: " << options.model_path << " (input " << input_size[0] << "x" << input_size[1] << "x"
            << input_size[2] << ") on " << options.device << "\n"
            << "images: " << count << ", batch size " << options.batch_size << "\n"
            << "accuracy: " << static_cast<double>(correct) / static_cast<double>(count) << " (" << correct << "/"
            << count << ")\n"
            << "latency per batch: median " << median(batch_ms) << " ms\n"
            << "throughput: " << static_cast<double>(count) / seconds << " images/s\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_options(argc, argv));
  } catch (const std::invalid_argument& error) {
    std::cerr << "pycnn_infer: " << error.what() << "\n";
    return 2;
  } catch (const std::exception& error) {
    std::cerr << "pycnn_infer: " << error.what() << "\n";
    return 1;
  }
}
