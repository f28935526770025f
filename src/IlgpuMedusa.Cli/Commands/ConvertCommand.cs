using System.CommandLine;
using IlgpuMedusa.Models;

namespace IlgpuMedusa.Cli.Commands;

/// <summary><c>convert --model DIR --out DIR2 [--dtype f32|f16|bf16]</c>: writes a Hugging Face layout directory.</summary>
internal static class ConvertCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "Source model directory (llama2.c or Hugging Face layout).", Required = true };
        var output = new Option<string>("--out") { Description = "Output directory (config.json, model.safetensors, tokenizer.model).", Required = true };
        var dtype = new Option<string>("--dtype") { Description = "f32 | f16 | bf16.", DefaultValueFactory = _ => "f32" };
        var force = new Option<bool>("--force") { Description = "Overwrite a non-empty output directory." };
        var command = new Command("convert", "Convert a model to the Hugging Face layout (safetensors).") { model, output, dtype, force };
        command.SetAction(parse =>
        {
            var type = DTypeInfo.ParseFloat(parse.GetValue(dtype)!, "--dtype");
            using var progress = new ConsoleProgress("converting");
            ModelConverter.Convert(parse.GetValue(model)!, parse.GetValue(output)!, type, progress, parse.GetValue(force));
            Console.Error.WriteLine($"Wrote {parse.GetValue(output)}.");
            return 0;
        });
        return command;
    }
}
